"""The guest image: its bytes are what the listing says, and the listing hangs together."""
import pytest

iced_x86 = pytest.importorskip("iced_x86", reason="iced-x86 (a test dependency in pyproject.toml) is not installed")

from vcpu.kvm import kvm_guest as g

LINES = g.parse_listing(g.LISTING)


def _labels() -> dict[str, int]:
    out, pending = {}, []
    for line in g.LISTING.splitlines():
        code = line.split(";", 1)[0].strip()
        if code.endswith(":"):
            pending.append(code[:-1])
        elif code:
            for name in pending:
                out[name] = int(code.split()[0], 16)
            pending = []
    return out


def test_every_line_disassembles_to_its_text():
    fmt = iced_x86.Formatter(iced_x86.FormatterSyntax.NASM)
    for addr, code, text in LINES:
        insn = iced_x86.Decoder(16, code, ip=addr).decode()
        assert insn.len == len(code), f"{addr:04x}: {code.hex()} is more than one instruction"
        assert fmt.format(insn) == text, f"{addr:04x}: bytes say {fmt.format(insn)!r}, listing {text!r}"


def test_image_is_the_listing_in_order_and_decodes_whole():
    assert g.IMAGE == b"".join(code for _, code, _ in LINES)
    decoded = list(iced_x86.Decoder(16, g.IMAGE, ip=g.LOAD_GPA))
    assert [i.ip for i in decoded] == [addr for addr, _, _ in LINES]
    assert all(i.code != iced_x86.Code.INVALID for i in decoded)


def test_vectors_and_branches_land_on_labels():
    labels = _labels()
    starts = {addr for addr, _, _ in LINES}
    decoded = {i.ip: i for i in iced_x86.Decoder(16, g.IMAGE, ip=g.LOAD_GPA)}
    ivt = {decoded[a].memory_displacement: decoded[a].immediate16 for a in starts
           if decoded[a].mnemonic == iced_x86.Mnemonic.MOV and decoded[a].memory_displacement in (0x80, 0x100)}
    assert ivt == {g.PIC_VECTOR * 4: labels["isr_pic"], g.TIMER_VECTOR * 4: labels["isr_timer"]}
    for i in decoded.values():
        if i.is_jcc_short_or_near or i.is_jmp_short_or_near or i.is_call_near:
            assert i.near_branch_target in labels.values(), f"{i.ip:04x}: branch to no label"


@pytest.mark.parametrize("word, addr", [
    ("P_WORKLOAD", "[500h]"), ("P_SPIN", "[504h]"), ("P_INTERVAL", "[508h]"), ("P_TSC_OFFSET", "[510h]"),
    ("P_INJECT_GPA", "[518h]"), ("P_RING_GPA", "[51Ch]"), ("P_RING_MASK", "[520h]"), ("G_COUNT", "[600h]"),
    ("G_DEADLINE", "[608h]"), ("G_HLT_TSC", "[610h]"), ("G_ARMED", "[618h]"),
])
def test_the_listing_uses_the_layout_the_vmm_writes(word, addr):
    assert f"[{getattr(g, word):X}h]" == addr
    assert any(addr in text for _, _, text in LINES)
