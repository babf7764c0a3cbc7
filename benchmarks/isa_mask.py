"""Run ai-edge-litert's kernels as on a CPU without AVX-512 and VNNI, on this one.

The int8 figures that matter most come from CPUs this project does not have: an AVX2-only core runs the same
int8 network up to 9x slower than an AVX-512/VNNI one (issue #11). XNNPACK and ruy pick their kernels once,
from the `cpuinfo` library's table of ISA flags (`struct cpuinfo_x86_isa cpuinfo_isa`), which is linked
into `libpywrap_litert_common.so`. There is no switch for it (unlike oneDNN's `ONEDNN_MAX_CPU_ISA`), so
`mask_isa()` initialises cpuinfo itself, clears the AVX-512, AVX10, AMX and VNNI flags in that table, and
reads them back, before the first interpreter exists. From then on, every interpreter in the process runs
the AVX2 + FMA kernels natively on this core.

What this measures, and what not: the kernels of an AVX2-only CPU, at this core's clock, caches and
microarchitecture. It is not a measurement on another CPU; benchmarks label it as masked.

Where the symbols come from: `nm` (binutils) reads the library's static symbol table; a library build
without that table, or with another layout of the struct, is refused with a message rather than patched.
A well-kept library for this does not exist: CPUID cannot be intercepted in user space without CPUID
faulting (`arch_prctl(ARCH_SET_CPUID)`), which this VM's CPU lacks, and Intel SDE is not on a registry."""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
from pathlib import Path

# Field order of cpuinfo's `struct cpuinfo_x86_isa` on x86-64, as linked into ai-edge-litert 2.x (86 bytes:
# upstream's layout plus one field among the AVX-512/AMX group; `_check_layout` pins the indices we use).
SSE3, AVX, AVXVNNI, FMA3, FMA4, XOP, F16C, AVX2, AVX512F = 16, 22, 23, 24, 25, 26, 27, 28, 29
LAST_WIDE = 56          # avx512f .. avx_ne_convert (and the extra field): everything past AVX2 that is vector
STRUCT_SIZE = 86
MASKED = (AVXVNNI, *range(AVX512F, LAST_WIDE + 1))  # the flags an AVX2-only CPU lacks


def _library() -> Path:
    import ai_edge_litert.interpreter as interpreter
    return Path(interpreter.__file__).resolve().parent / "libpywrap_litert_common.so"


def _symbols(lib: Path, names: set[str]) -> dict[str, tuple[int, int]]:
    if shutil.which("nm") is None:
        raise RuntimeError("isa_mask needs `nm` (binutils) to find cpuinfo in ai-edge-litert")
    out = subprocess.run(["nm", "-S", str(lib)], capture_output=True, text=True, check=True).stdout
    found = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] in names:
            found[parts[3]] = (int(parts[0], 16), int(parts[1], 16))
        elif len(parts) == 3 and parts[2] in names:
            found[parts[2]] = (int(parts[0], 16), 0)
    missing = names - found.keys()
    if missing:
        raise RuntimeError(f"{lib.name} has no symbol {', '.join(sorted(missing))}: cannot mask its ISA")
    return found


def _load_base(lib: Path) -> int:
    real = os.path.realpath(lib)
    for line in Path("/proc/self/maps").read_text().splitlines():
        f = line.split()
        if len(f) >= 6 and os.path.realpath(f[5]) == real and int(f[2], 16) == 0:
            return int(f[0].split("-")[0], 16)
    raise RuntimeError(f"{lib} is not mapped in this process")


def _check_layout(flags: bytes) -> None:
    """Refuse a struct whose layout we do not know: AVX2/FMA3/AVX/SSE3 set (any CPU this code runs on has
    them, and /proc/cpuinfo agrees), FMA4/XOP clear (no CPU with AVX-512 has them)."""
    from shared.model import cpu_flags
    proc = cpu_flags()
    expect = {SSE3: "pni" in proc, AVX: "avx" in proc, FMA3: "fma" in proc, AVX2: "avx2" in proc,
              AVX512F: "avx512f" in proc, AVXVNNI: "avx_vnni" in proc, FMA4: "fma4" in proc, XOP: "xop" in proc}
    wrong = {i: (flags[i], want) for i, want in expect.items() if bool(flags[i]) != want}
    if len(flags) != STRUCT_SIZE or wrong:
        raise RuntimeError(f"cpuinfo_isa layout not recognised (size {len(flags)}, mismatches at {wrong}); "
                           "not patching")


def mask_isa(target: str = "avx2") -> dict:
    """Make ai-edge-litert in this process see only AVX2 + FMA (target "avx2"). Call before creating any
    interpreter. Returns what it did, for the benchmark's JSON."""
    if target != "avx2":
        raise ValueError(f"only 'avx2' can be emulated, not {target!r}")
    lib = _library()
    syms = _symbols(lib, {"cpuinfo_isa", "cpuinfo_initialize", "hardware_config"})
    base = _load_base(lib)
    hw_addr, hw_size = syms["hardware_config"]
    if any(ctypes.string_at(base + hw_addr, hw_size)):
        raise RuntimeError("XNNPACK already chose its kernels in this process: call mask_isa() first")
    if not ctypes.CFUNCTYPE(ctypes.c_bool)(base + syms["cpuinfo_initialize"][0])():
        raise RuntimeError("cpuinfo_initialize failed")
    addr, size = syms["cpuinfo_isa"]
    before = ctypes.string_at(base + addr, size)
    _check_layout(before)
    cleared = [i for i in MASKED if before[i]]
    for i in cleared:
        ctypes.c_bool.from_address(base + addr + i).value = False
    after = ctypes.string_at(base + addr, size)
    if any(after[i] for i in MASKED) or not after[AVX2]:
        raise RuntimeError("masking cpuinfo_isa did not hold")
    return {"target": "avx2", "library": lib.name, "flags_cleared": len(cleared),
            "kept": ["sse4_2", "avx", "fma3", "f16c", "avx2"],
            "note": "ai-edge-litert's kernels chosen as on an AVX2-only CPU (AVX-512/VNNI flags masked in "
                    "cpuinfo), run on this CPU: not a measurement of another CPU"}
