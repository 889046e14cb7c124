from vcpu import abi


def test_slots_are_whole_cache_lines_and_single_writer_lines_do_not_overlap():
    assert abi.SLOT_WORDS * abi.WORD % 64 == 0
    assert abi.HEADER_WORDS * abi.WORD % 64 == 0
    line = lambda word: word // abi.LINE_WORDS  # noqa: E731
    device = {line(abi.IRQ_SEQ), line(abi.INJECT_NS)}
    vcpu_hot = {line(abi.IRQ_ACK), line(abi.STATE), line(abi.TIMER_DEADLINE_NS)}
    host = {line(w) for w in (abi.HALT_POLL_NS, abi.HALT_POLL_NS_SHRINK, abi.PARAM_GEN, abi.RATE_MILLIHZ)}
    counters = {line(w) for w in abi.C.values()}
    assert len(device) == len(vcpu_hot) == len(host) == 1
    groups = [device, vcpu_hot, host, counters]
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            assert not a & b


def test_every_slot_starts_on_a_cache_line():
    for i in range(8):
        assert abi.slot_base(i) * abi.WORD % 64 == 0
    assert abi.segment_size(3) == (abi.HEADER_WORDS + 3 * abi.SLOT_WORDS) * abi.WORD


def test_histogram_bucket_is_fls64_capped():
    assert abi.hist_bucket(0) == 0
    assert abi.hist_bucket(1) == 1
    assert abi.hist_bucket(1023) == 10
    assert abi.hist_bucket(1024) == 11
    assert abi.hist_bucket(2**62) == abi.HIST_BUCKETS - 1


def test_segment_names_carry_their_owner():
    name = abi.segment_name(4242)
    assert abi.segment_owner(name) == 4242
    assert abi.segment_owner("psm_1234") is None
