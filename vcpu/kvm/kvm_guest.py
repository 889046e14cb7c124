"""The guest the kvm backend runs: a few dozen real-mode instructions, listing beside the bytes.

Memory (guest-physical; DS/ES/SS get 4 GiB limits, "unreal mode", so `[ebx]` reaches past 1 MiB):

    0x0000  real-mode IVT          vector 20h: PIC IRQ0 (irqfd, GSI 0); vector 40h: LAPIC timer
    0x0500  parameters             written by the VMM before the first KVM_RUN (P_*)
    0x0600  guest state            written by the guest (G_*): G_COUNT is irq_delivered, G_ARMED
                                   the timer's irq_injected
    0x1000  code                   LISTING below
    0x8000  stack top
    RING_GPA                       one 32-byte entry per interrupt: wake - event, event - HLT and
                                   the wake itself, in guest TSC cycles (u64s), entry G_COUNT %
                                   RING_ENTRIES, written before G_COUNT moves
    SHARED_GPA                     the hpemu segment (vcpu/abi.py), where the device stamps
                                   INJECT_TSC right before it writes the irqfd

A sample spans, in guest TSC cycles: timer, the armed IA32_TSC_DEADLINE to the ISR's first
`rdtsc` (kvm-unit-tests' tscdeadline_latency); io and idle, the device's host `rdtsc` just before
its eventfd write to the ISR's first `rdtsc`, the device's stamp moved into guest time with the
vCPU's TSC offset (P_TSC_OFFSET). No exit to the VMM lies inside either span.

The waits: `idle` halts until the next tick; `io` submits a write with `out 10h` (a
KVM_IOEVENTFD: the kernel signals the device's eventfd and re-enters, as for a virtio notify) and
halts until its completion; `timer` arms the
TSC deadline with IF clear, then `sti; hlt`. With P_SPIN set (policy idle-poll) the guest spins
with interrupts enabled instead of halting.
"""
from __future__ import annotations

import struct

LOAD_GPA = 0x1000
STACK_TOP = 0x8000
PIC_VECTOR = 0x20
TIMER_VECTOR = 0x40
SUBMIT_PORT = 0x10
WORKLOADS = {"idle": 0, "io": 1, "timer": 2}
# `hostd calibrate`'s probes: loops entered directly (no interrupts set up), counting in G_COUNT.
PROBES = {"exits": 0x116D, "ports": 0x1179}

# Parameters (VMM -> guest).
P_WORKLOAD = 0x500    # u32, WORKLOADS
P_SPIN = 0x504        # u8, 1: spin instead of hlt
P_INTERVAL = 0x508    # u64, timer: deadline distance in TSC cycles
P_TSC_OFFSET = 0x510  # u64, guest TSC - host TSC
P_INJECT_GPA = 0x518  # u32, where the device's INJECT_TSC word is
P_RING_GPA = 0x51C    # u32
P_RING_MASK = 0x520   # u32, RING_ENTRIES - 1
# Guest state (guest -> VMM).
G_COUNT = 0x600       # u32, interrupts taken (ISR runs)
G_DEADLINE = 0x608    # u64, the armed TSC deadline
G_HLT_TSC = 0x610     # u64, TSC just before the latest wait
G_ARMED = 0x618       # u32, timer: deadlines armed

# What one latency sample spans, per workload (in the result JSON as spec.kvm.latency_span).
LATENCY_SPAN = {
    "timer": "guest TSC-deadline expiry (IA32_TSC_DEADLINE) to the guest ISR's first rdtsc; guest TSC cycles",
    "io": "device rdtsc just before its irqfd write (the write's completion) to the guest ISR's first rdtsc; "
          "no exit to the VMM inside",
    "idle": "device rdtsc just before its irqfd write (the tick) to the guest ISR's first rdtsc; "
            "no exit to the VMM inside",
}

RING_GPA = 0x100000
RING_ENTRIES = 1 << 16
RING_ENTRY = 32  # u64 words: wake - event, event - HLT, wake TSC, unused
RAM_SIZE = RING_GPA + RING_ENTRIES * RING_ENTRY
SHARED_GPA = 0x40000000

# offset  bytes           instruction              ; why
LISTING = """
start:
1000  c7068000d410    mov word [80h],10D4h     ; IVT[20h] = isr_pic (PIC IRQ0, vector from ICW2)
1006  c70682000000    mov word [82h],0
100c  c70600010011    mov word [100h],1100h    ; IVT[40h] = isr_timer (LVT timer vector)
1012  c70602010000    mov word [102h],0
1018  b011            mov al,11h               ; PIC ICW1: edge, cascade, ICW4 follows
101a  e620            out 20h,al
101c  b020            mov al,20h               ; ICW2: IRQ0 -> vector 20h
101e  e621            out 21h,al
1020  b004            mov al,4                 ; ICW3: slave on IRQ2
1022  e621            out 21h,al
1024  b001            mov al,1                 ; ICW4: 8086 mode
1026  e621            out 21h,al
1028  b0fe            mov al,0FEh              ; OCW1: IRQ0 only
102a  e621            out 21h,al
102c  66b91b000000    mov ecx,1Bh              ; IA32_APIC_BASE |= EN | EXTD: x2APIC on
1032  0f32            rdmsr
1034  660d000c0000    or eax,0C00h
103a  0f30            wrmsr
103c  66b90f080000    mov ecx,80Fh             ; SVR: APIC enabled, spurious vector FFh
1042  66b8ff010000    mov eax,1FFh
1048  6631d2          xor edx,edx
104b  0f30            wrmsr
104d  66b932080000    mov ecx,832h             ; LVT timer: TSC-deadline mode (18:17 = 10b), vector 40h
1053  66b840000400    mov eax,40040h
1059  0f30            wrmsr
105b  66a10005        mov eax,[500h]           ; P_WORKLOAD
105f  6683f801        cmp eax,1
1063  7410            je short 1075h           ; -> io
1065  6683f802        cmp eax,2
1069  7416            je short 1081h           ; -> timer
idle:
106b  668b1e0006      mov ebx,[600h]           ; G_COUNT before the wait
1070  e83a00          call 10ADh               ; -> wait
1073  ebf6            jmp short 106Bh          ; -> idle
io:
1075  668b1e0006      mov ebx,[600h]
107a  e610            out 10h,al               ; submit one write: an ioeventfd exit
107c  e82e00          call 10ADh               ; -> wait for its completion
107f  ebf4            jmp short 1075h          ; -> io
timer:
1081  668b1e0006      mov ebx,[600h]
1086  0f31            rdtsc                    ; deadline = now + P_INTERVAL, armed with IF clear
1088  6603060805      add eax,[508h]
108d  6613160c05      adc edx,[50Ch]
1092  66a30806        mov [608h],eax           ; G_DEADLINE
1096  6689160c06      mov [60Ch],edx
109b  66b9e0060000    mov ecx,6E0h             ; IA32_TSC_DEADLINE
10a1  0f30            wrmsr
10a3  66ff061806      inc dword [618h]         ; G_ARMED: deadlines armed (the timer's irq_injected)
10a8  e80200          call 10ADh               ; -> wait
10ab  ebd4            jmp short 1081h          ; -> timer
wait:
10ad  0f31            rdtsc                    ; G_HLT_TSC: the halt begins
10af  66a31006        mov [610h],eax
10b3  6689161406      mov [614h],edx
10b8  803e040500      cmp byte [504h],0        ; P_SPIN?
10bd  750b            jne short 10CAh          ; -> spin
halt:
10bf  fb              sti                      ; the STI shadow covers the HLT: no lost wake
10c0  f4              hlt
10c1  fa              cli
10c2  66391e0006      cmp [600h],ebx           ; until the ISR has run
10c7  74f6            je short 10BFh           ; -> halt
10c9  c3              ret
spin:
10ca  fb              sti                      ; idle=poll: never HLT
spin_loop:
10cb  66391e0006      cmp [600h],ebx
10d0  74f9            je short 10CBh           ; -> spin_loop
10d2  fa              cli
10d3  c3              ret
isr_pic:
10d4  6660            pushad
10d6  0f31            rdtsc                    ; the wake, first thing
10d8  6689c6          mov esi,eax
10db  6689d7          mov edi,edx
10de  668b1e1805      mov ebx,[518h]           ; P_INJECT_GPA
10e3  67668b03        mov eax,[ebx]            ; the device's host-TSC stamp ...
10e7  67668b5304      mov edx,[ebx+4]
10ec  6603061005      add eax,[510h]           ; ... + P_TSC_OFFSET: the event in guest TSC
10f1  6613161405      adc edx,[514h]
10f6  e82e00          call 1127h               ; -> record
10f9  b020            mov al,20h               ; PIC EOI
10fb  e620            out 20h,al
10fd  6661            popad
10ff  cf              iret
isr_timer:
1100  6660            pushad
1102  0f31            rdtsc                    ; the wake, first thing
1104  6689c6          mov esi,eax
1107  6689d7          mov edi,edx
110a  66a10806        mov eax,[608h]           ; the event: G_DEADLINE
110e  668b160c06      mov edx,[60Ch]
1113  e81100          call 1127h               ; -> record
1116  66b90b080000    mov ecx,80Bh             ; x2APIC EOI
111c  6631c0          xor eax,eax
111f  6631d2          xor edx,edx
1122  0f30            wrmsr
1124  6661            popad
1126  cf              iret
record:
1127  668b1e0006      mov ebx,[600h]           ; entry = RING + (G_COUNT & P_RING_MASK) * 32
112c  66231e2005      and ebx,[520h]
1131  66c1e305        shl ebx,5
1135  66031e1c05      add ebx,[51Ch]
113a  6766897310      mov [ebx+10h],esi        ; the wake TSC too: the VMM matches it to the kernel's per-halt trace
113f  6766897b14      mov [ebx+14h],edi
1144  6629c6          sub esi,eax              ; wake - event
1147  6619d7          sbb edi,edx
114a  67668933        mov [ebx],esi
114e  6766897b04      mov [ebx+4],edi
1153  662b061006      sub eax,[610h]           ; event - G_HLT_TSC
1158  661b161406      sbb edx,[614h]
115d  6766894308      mov [ebx+8],eax
1162  676689530c      mov [ebx+0Ch],edx
1167  66ff060006      inc dword [600h]         ; G_COUNT: published after the entry
116c  c3              ret
exits:
116d  6631c0          xor eax,eax              ; calibrate: back-to-back exits the kernel handles itself
1170  0fa2            cpuid
1172  66ff060006      inc dword [600h]         ; G_COUNT: exits made
1177  ebf4            jmp short 116Dh          ; -> exits
ports:
1179  e610            out 10h,al               ; calibrate: back-to-back ioeventfd exits
117b  66ff060006      inc dword [600h]         ; G_COUNT: port writes made
1180  ebf7            jmp short 1179h          ; -> ports
"""


def parse_listing(text: str) -> list[tuple[int, bytes, str]]:
    """(address, bytes, instruction) per instruction line; labels and comments left out."""
    out = []
    for line in text.splitlines():
        code = line.split(";", 1)[0].rstrip()
        if not code or code.endswith(":"):
            continue
        addr, hexbytes, insn = code.split(None, 2)
        out.append((int(addr, 16), bytes.fromhex(hexbytes), insn.strip()))
    return out


def _image() -> bytes:
    image = bytearray()
    for addr, code, _ in parse_listing(LISTING):
        assert addr == LOAD_GPA + len(image), f"listing address {addr:#x} out of sequence"
        image += code
    return bytes(image)


IMAGE = _image()


def load(ram: memoryview, workload: str, spin: bool, interval_cycles: int, inject_gpa: int) -> None:
    """Write the image and its parameters into guest RAM (a writable byte buffer)."""
    ram[LOAD_GPA:LOAD_GPA + len(IMAGE)] = IMAGE
    struct.pack_into("<IB", ram, P_WORKLOAD, WORKLOADS.get(workload, 0), int(spin))
    struct.pack_into("<Q", ram, P_INTERVAL, interval_cycles)
    struct.pack_into("<III", ram, P_INJECT_GPA, inject_gpa, RING_GPA, RING_ENTRIES - 1)


def entry(workload: str) -> int:
    """Where the vCPU starts: the image's start, or a calibration probe's loop."""
    return PROBES.get(workload, LOAD_GPA)


def set_tsc_offset(ram: memoryview, offset: int) -> None:
    struct.pack_into("<q", ram, P_TSC_OFFSET, offset)
