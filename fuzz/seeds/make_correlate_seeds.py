#!/usr/bin/env python3
"""Regenerates fuzz/seeds/correlate/ (run from anywhere; needs only python3).

Each seed is a program for the `correlate` target in the op encoding documented on
`flagguard_fuzz::correlate` (fuzz/src/lib.rs): byte 0 configures, then one op byte each with
its operands.
"""

import pathlib
import struct

OUT = pathlib.Path(__file__).resolve().parent / "correlate"
CHECKOUT, EXP, BANNER, SEARCH = range(4)  # FLAGS
ON, OFF, BLUE, NO_VARIANT = range(4)  # VARIANTS (3 = none)
US, MS, S, NEAR_MAX = range(4)  # latency units
STEP_MS, STEP_100MS, STEP_10S, STEP_1000S = range(4)


def evaluation(trace, slice_, flag, variant, error=False, context=False, shop=False, no_trace=False):
    a = (trace & 15) | (slice_ & 7) << 4 | (0x80 if no_trace else 0)
    b = flag | variant << 2 | error << 4 | context << 5 | shop << 6
    return bytes([0, a, b])


def outcome(trace, slice_, span, latency, unit=MS, error=False):
    return bytes([3 | error << 3 | unit << 6, (trace & 15) | (slice_ & 7) << 4, span & 0xFF]) + struct.pack("<H", latency)


def step(n, unit=STEP_100MS):
    return bytes([5 | unit << 3]) + struct.pack("<H", n)


FAST_TICK = bytes([6])


def full_tick(rearm=False, restore=False):
    return bytes([7 | rearm << 3 | restore << 4])


def traffic(requests, bad_treatment):
    out = bytearray([1])  # sequential_fdr on
    for k in range(requests):
        trace, slice_ = k % 16, k % 4
        variant = ON if k % 2 == 0 else OFF
        out += evaluation(trace, slice_, CHECKOUT, variant, context=True)
        failing = bad_treatment and variant == ON and k % 3 == 0
        latency = 900 if bad_treatment and variant == ON else 25 + k % 7
        out += outcome(trace, slice_, span=k, latency=latency, error=failing)
        out += step(5)  # 500 ms
        if k % 5 == 4:
            out += FAST_TICK
        if k % 20 == 19:
            out += full_tick(rearm=bad_treatment and k == 59)
    out += step(3, STEP_10S) + full_tick(restore=bad_treatment)
    return bytes(out)


def edge_cases():
    out = bytearray([0])
    # More live traces than the cap (6): capacity eviction, flagged and unflagged.
    for t in range(10):
        out += outcome(t, t % 8, span=1, latency=t * 100, unit=US)
        if t % 2:
            out += evaluation(t, t % 8, EXP, BLUE)
    # One flag seen with two variants in a trace (mixed), a duplicate span, exposures only.
    out += evaluation(3, 0, CHECKOUT, ON) + evaluation(3, 0, CHECKOUT, OFF) + outcome(3, 0, span=7, latency=10)
    out += outcome(3, 0, span=7, latency=10)
    out += evaluation(0, 1, BANNER, NO_VARIANT) + evaluation(0, 1, SEARCH, ON, error=True) + evaluation(0, 2, SEARCH, OFF, no_trace=True)
    out += evaluation(5, 5, CHECKOUT, ON, shop=True) + outcome(5, 5, span=9, latency=3, unit=NEAR_MAX, error=True)
    # Idle eviction into tombstones, then late spans, then tombstone expiry.
    out += step(25) + FAST_TICK + outcome(5, 5, span=10, latency=5, unit=S) + step(60) + full_tick()
    # Long gaps: windows slide and drop; series go idle.
    out += step(400, STEP_1000S) + full_tick() + step(30000, STEP_1000S) + full_tick(restore=True)
    return bytes(out)


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "healthy-traffic.bin").write_bytes(traffic(80, bad_treatment=False))
    (OUT / "failing-treatment.bin").write_bytes(traffic(80, bad_treatment=True))
    (OUT / "edge-cases.bin").write_bytes(edge_cases())


if __name__ == "__main__":
    main()
