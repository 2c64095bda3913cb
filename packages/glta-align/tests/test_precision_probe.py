"""``dtype="auto"`` on the CPU by measurement: the probe, its cache and its fallbacks."""

from __future__ import annotations

import itertools
import json
from types import SimpleNamespace

import pytest
import torch

from glta_align import llm as llm_mod
from glta_align.llm import load_llm, precision_probe, probe_cache_path

SHAPE = SimpleNamespace(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                        intermediate_size=128)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("GLTA_DTYPE_PROBE", raising=False)
    monkeypatch.setattr(llm_mod, "_busy_load", lambda: None)  # a quiet machine
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: 0.0)
    monkeypatch.setattr(llm_mod, "PROBE_BUSY_PAUSE_S", 0.0)  # retries without the pause
    # int8 a candidate where the tests give VNNI (those that time it without VNNI say so)
    monkeypatch.setattr(llm_mod, "_int8_candidate", lambda: llm_mod._int8_faster_on_cpu())
    # the AMX rule uncached, so that it follows each test's `_cpu_supports`
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu",
                        lambda: llm_mod._cpu_supports("_is_amx_tile_supported"))


def test_cache_path_respects_xdg(tmp_path):
    assert probe_cache_path() == tmp_path / "xdg" / "glta" / "precision-probe.json"


def test_probe_measures_once_then_reads_the_cache(monkeypatch):
    calls = []

    def fake_time(shapes, precision, rows, repeats):
        calls.append(precision)
        return {"float32": 100.0, "bfloat16": 600.0, "int8": 500.0}[precision]

    monkeypatch.setattr(llm_mod, "_time_products", fake_time)
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "bfloat16")  # flags agree
    first = precision_probe(SHAPE)
    assert first["source"] == "probe" and first["choice"] == "bfloat16"
    assert first["gflops"] == {"float32": 100.0, "bfloat16": 600.0, "int8": 500.0}
    assert calls == ["float32", "bfloat16", "int8"] * 3  # interleaved, 3 rounds
    stored = json.loads(probe_cache_path().read_text())
    assert stored[first["key"]]["choice"] == "bfloat16"
    again = precision_probe(SHAPE)
    assert again["source"] == "cache" and again["choice"] == "bfloat16" and len(calls) == 9
    # another LLM shape is another key: measured anew
    other = precision_probe(SimpleNamespace(**{**vars(SHAPE), "hidden_size": 96}))
    assert other["source"] == "probe" and other["key"] != first["key"] and len(calls) == 18
    # with LoRA int8 is no candidate
    lora = precision_probe(SHAPE, lora={"r": 2})
    assert "int8" not in lora["gflops"] and lora["choice"] == "bfloat16"


def test_cache_entry_of_an_older_format_is_measured_again(monkeypatch):
    monkeypatch.setattr(llm_mod, "_time_products", lambda shapes, p, rows, repeats:
                        {"float32": 100.0, "bfloat16": 600.0}[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    first = precision_probe(SHAPE)
    stored = json.loads(probe_cache_path().read_text())
    assert stored[first["key"]]["version"] == llm_mod.PROBE_CACHE_VERSION
    # an entry written by an older version (loaded figures, no version): not trusted
    stored[first["key"]] = {"choice": "float32", "gflops": {"float32": 22.0, "bfloat16": 28.0}}
    probe_cache_path().write_text(json.dumps(stored))
    again = precision_probe(SHAPE)
    assert again["source"] == "probe" and again["choice"] == "bfloat16"
    assert json.loads(probe_cache_path().read_text())[first["key"]]["gflops"]["bfloat16"] == 600


def test_busy_machine_probe_is_used_but_not_cached(monkeypatch):
    # a load average above the CPU count alone (the last minute, not this measurement, was
    # busy): one attempt, its figures decide, nothing cached
    rates = itertools.chain([100.0, 50.0, 90.0, 700.0], itertools.repeat(10.0))
    monkeypatch.setattr(llm_mod, "_time_products", lambda s, p, r, n: next(rates))
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_busy_load", lambda: 7.5)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "bfloat16")
    busy = precision_probe(SHAPE, repeats=2)
    assert "measured_choice" not in busy
    assert busy["choice"] == "bfloat16" and busy["gflops"] == {"float32": 100.0,
                                                              "bfloat16": 700.0}
    assert busy["busy_load"] == 7.5 and not probe_cache_path().exists()
    assert busy["attempts"] == 1
    monkeypatch.setattr(llm_mod, "_busy_load", lambda: None)
    rates = iter([100.0, 600.0])
    quiet = precision_probe(SHAPE, repeats=1)
    assert quiet["source"] == "probe" and "busy_load" not in quiet
    assert precision_probe(SHAPE)["source"] == "cache"


def test_a_probe_overlapped_by_other_work_measures_again_after_a_pause(monkeypatch):
    # other work competes during the first attempt only: the probe pauses, measures again,
    # keeps each candidate's best over both attempts and caches the quiet result
    shares = iter([0.6, 0.0])
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: next(shares))
    slept = []
    monkeypatch.setattr(llm_mod, "PROBE_BUSY_PAUSE_S", 1.5)
    monkeypatch.setattr("time.sleep", slept.append)
    rates = iter([100.0, 200.0, 90.0, 650.0])  # attempt 1: fp32, bf16; attempt 2: the same
    monkeypatch.setattr(llm_mod, "_time_products", lambda s, p, r, n: next(rates))
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "bfloat16")
    out = precision_probe(SHAPE, repeats=1)
    assert out["choice"] == "bfloat16" and out["gflops"] == {"float32": 100.0,
                                                            "bfloat16": 650.0}
    assert out["attempts"] == 2 and slept == [1.5] and "busy_share" not in out
    assert precision_probe(SHAPE)["source"] == "cache"


def test_a_probe_busy_throughout_leaves_the_choice_to_the_flags(monkeypatch):
    # the AMD EPYC's slow spell (bf16 ahead of int8) on a machine busy in every attempt:
    # the flags' int8 is used, the measured winner reported, nothing cached
    slow = {"float32": 123.0, "bfloat16": 311.0, "int8": 265.0}
    monkeypatch.setattr(llm_mod, "_time_products", lambda s, p, r, n: slow[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "int8")
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: 0.7)
    out = precision_probe(SHAPE)
    assert out["choice"] == "int8" and out["measured_choice"] == "bfloat16"
    assert out["gflops"] == slow and out["busy_share"] == 0.7
    # the first measurement and the flags-contradiction round each retry while competed with
    assert out["attempts"] == 2 * (1 + llm_mod.PROBE_BUSY_RETRIES)
    assert not probe_cache_path().exists()
    assert llm_mod._busy_note(out) == (
        "; busy machine (share 0.7) in 6 attempts: measured bfloat16, used int8, not cached")
    assert llm_mod._busy_note({"choice": "int8", "gflops": slow}) == ""


def test_a_choice_against_the_flags_is_measured_again(monkeypatch):
    # an AMD EPYC's probe (int8 per its flags) once measured every candidate in a slow
    # spell (fp32 123, bf16 311, int8 265 GFLOP/s) and cached bf16; measured again, int8
    # takes its usual lead and is chosen
    slow = {"float32": 123.0, "bfloat16": 311.0, "int8": 265.0}
    usual = {"float32": 170.0, "bfloat16": 390.0, "int8": 600.0}
    calls = []

    def fake_time(shapes, precision, rows, repeats):
        calls.append(precision)
        return (slow if len(calls) <= 9 else usual)[precision]

    monkeypatch.setattr(llm_mod, "_time_products", fake_time)
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "int8")
    out = precision_probe(SHAPE)
    assert out["choice"] == "int8" and out["gflops"] == usual and out["rounds"] == 6
    assert len(calls) == 18 and out["flag_rule"] == "int8"
    # agreeing with the flags the first time: no second measurement
    calls.clear()
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: calls.append(p) or usual[p])
    again = precision_probe(SHAPE, refresh=True)
    assert again["choice"] == "int8" and again["rounds"] == 3 and len(calls) == 9


def test_a_measurement_that_holds_twice_overrides_the_flags(monkeypatch):
    calls = []
    monkeypatch.setattr(llm_mod, "_time_products", lambda s, p, r, n: calls.append(p) or
                        {"float32": 100.0, "bfloat16": 500.0, "int8": 300.0}[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "int8")
    out = precision_probe(SHAPE)
    assert out["choice"] == "bfloat16" and out["rounds"] == 6 and len(calls) == 18
    assert precision_probe(SHAPE)["source"] == "cache"


def test_each_measurement_fills_the_probe_window(monkeypatch):
    # a fake clock: every product takes 1 ms, so one pass over the 4 shapes takes 4 ms and
    # a 50 ms window needs 13 passes
    import time

    clock = [0.0]
    calls = []

    def linear(x, w):
        calls.append(1)
        clock[0] += 1e-3
        return x

    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(torch.nn.functional, "linear", linear)
    monkeypatch.setattr(llm_mod, "PROBE_WINDOW_S", 0.05)
    shapes = llm_mod._linear_shapes(SHAPE)
    rate = llm_mod._time_products(shapes, "float32", 16, 2)
    assert len(calls) == 4 * (1 + 1 + 2 * 13)  # warm-up, one timed pass, 2 windows of 13
    assert rate == pytest.approx(sum(2.0 * 16 * k * n for k, n in shapes) / 4e-3 / 1e9)


def test_busy_load_compares_with_the_cpu_count(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(llm_mod.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(llm_mod.os, "getloadavg", lambda: (6.3, 6.0, 5.0))
    assert llm_mod._busy_load() == 6.3
    monkeypatch.setattr(llm_mod.os, "getloadavg", lambda: (1.2, 1.0, 1.0))
    assert llm_mod._busy_load() is None


def test_others_share_from_two_snapshots(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setattr(llm_mod.os, "cpu_count", lambda: 2)
    # 1 s of wall on 2 CPUs: the machine was busy 1.5 CPU-s, 0.4 of them this process's
    assert llm_mod._others_share((10.0, 100.0, 5.0), (11.0, 101.5, 5.4)) == 0.55
    assert llm_mod._others_share((10.0, 100.0, 5.0), (11.0, 100.3, 5.4)) == 0.0  # tick noise
    assert llm_mod._others_share(None, (11.0, 1.0, 1.0)) is None
    assert llm_mod._others_share((10.0, 1.0, 1.0), (10.001, 1.0, 1.0)) is None  # too short


@pytest.mark.skipif(llm_mod._cpu_snapshot() is None, reason="no /proc/stat (not Linux)")
def test_others_share_sees_a_competing_process(monkeypatch):
    import subprocess
    import sys

    monkeypatch.undo()  # the real reading, not the autouse fixture's quiet machine
    before = llm_mod._cpu_snapshot()
    # another process spinning one CPU for ~1 s while this one sleeps
    subprocess.run([sys.executable, "-c",
                    "import time\nt = time.perf_counter()\n"
                    "while time.perf_counter() - t < 1.0: pass"], check=True)
    share = llm_mod._others_share(before)
    assert share is not None and share >= 0.6 / (llm_mod.os.cpu_count() or 1), share


def test_probe_during_a_burst_of_other_work_is_not_cached(monkeypatch):
    # the 1-minute load stays below the CPU count, but other processes took half the CPUs
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: {"float32": 100.0, "bfloat16": 600.0}[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: 0.5)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "bfloat16")
    busy = precision_probe(SHAPE, repeats=1)
    assert busy["choice"] == "bfloat16" and busy["busy_share"] == 0.5
    assert "busy_load" not in busy and not probe_cache_path().exists()
    monkeypatch.setattr(llm_mod, "_others_share",
                        lambda before, after=None: llm_mod.OTHERS_SHARE_LIMIT)
    assert "busy_share" not in precision_probe(SHAPE, repeats=1)
    assert precision_probe(SHAPE)["source"] == "cache"


def test_without_vnni_int8_is_timed_and_measured_again(monkeypatch):
    # an x86 CPU without VNNI (an AVX2 CPU): int8 is measured, not ruled out by the flags,
    # which predict fp32; beating fp32 against the flags, it is measured a second time and
    # each candidate keeps its best of both
    calls = []
    rounds = {"float32": iter([90.0, 95.0, 80.0, 85.0, 90.0, 90.0]),
              "int8": iter([150.0, 140.0, 160.0, 120.0, 130.0, 110.0])}
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: calls.append(p) or next(rounds[p]))
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: False)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_int8_candidate", lambda: True)
    out = precision_probe(SHAPE)
    assert out["flag_rule"] == "float32" and out["choice"] == "int8"
    assert out["gflops"] == {"float32": 95.0, "int8": 160.0} and len(calls) == 12
    assert out["rounds"] == 6
    # int8 within 10% of fp32: fp32 kept
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: {"float32": 100.0, "int8": 105.0}[p])
    assert precision_probe(SHAPE, refresh=True)["choice"] == "float32"
    # with LoRA int8 is no candidate; off x86 neither
    assert precision_probe(SHAPE, lora={"r": 2})["gflops"] == {"float32": 100.0}
    monkeypatch.setattr(llm_mod, "_int8_candidate", lambda: False)
    assert precision_probe(SHAPE, refresh=True)["gflops"] == {"float32": 100.0}


def test_a_candidate_whose_products_fail_is_left_out(monkeypatch):
    def timed(shapes, precision, rows, repeats):
        if precision == "int8":
            raise RuntimeError("no int8 kernel here")
        return {"float32": 100.0, "bfloat16": 300.0}[precision]

    monkeypatch.setattr(llm_mod, "_time_products", timed)
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.setattr(llm_mod, "_flag_rule", lambda lora: "int8")
    out = precision_probe(SHAPE)
    assert out["source"] == "probe" and out["choice"] == "bfloat16"
    assert out["gflops"] == {"float32": 100.0, "bfloat16": 300.0}
    assert out["failed"] == {"int8": "RuntimeError: no int8 kernel here"}
    # fp32 failing as well: the probe fails and the flags decide
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda *a: (_ for _ in ()).throw(RuntimeError("no kernels")))
    assert precision_probe(SHAPE, refresh=True)["source"] == "flags"


def test_int8_candidate_is_the_x86_64_machines(monkeypatch):
    import platform

    monkeypatch.undo()
    for machine, expected in (("x86_64", True), ("AMD64", True), ("aarch64", False),
                              ("arm64", False)):
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        assert llm_mod._int8_candidate() is expected


def test_the_kernels_instruction_set_is_part_of_the_key(monkeypatch):
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: {"float32": 100.0, "int8": 300.0}[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: False)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX512")
    wide = precision_probe(SHAPE)
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX2")
    narrow = precision_probe(SHAPE)
    assert narrow["source"] == "probe" and narrow["key"] != wide["key"]
    assert (wide["isa"], narrow["isa"]) == ("AVX512", "AVX2")
    assert precision_probe(SHAPE)["source"] == "cache"
    # oneDNN held back alone is another key too
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    onednn = precision_probe(SHAPE)
    assert onednn["source"] == "probe" and onednn["isa"] == "AVX512; oneDNN AVX2"


def test_kernel_isa_names_every_limit(monkeypatch):
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX2")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    assert llm_mod.kernel_isa() == "AVX2; oneDNN AVX2; MKL AVX2"
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    assert llm_mod.kernel_isa() == "AVX2"


@pytest.mark.parametrize(("aten", "onednn", "below"), [
    ("AVX512", None, False), ("AVX512", "AVX512_CORE_AMX", False), ("AVX512", "ALL", False),
    ("AVX2", None, True), ("AVX512", "AVX2", True), ("AVX512", "avx2_vnni", True),
    ("DEFAULT", None, True), ("unknown", None, False),
])
def test_below_avx512_reads_aten_and_onednn(monkeypatch, aten, onednn, below):
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: aten)
    if onednn is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", onednn)
    assert llm_mod._below_avx512() is below


def test_avx512_checks_follow_the_kernels_instruction_set(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_vnni_supported", lambda: True, raising=False)
    monkeypatch.delenv("GLTA_INT8_ACTIVATIONS", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX512")
    assert llm_mod._cpu_supports("_is_avx512_bf16_supported")
    assert llm_mod.int8_activation_dtype() == torch.bfloat16
    # torch's kernels held to AVX2 (ATEN_CPU_CAPABILITY=avx2): the CPU's AVX-512 flags no
    # longer count, so int8 keeps fp32 activations (bf16 would run without bf16 instructions)
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX2")
    assert not llm_mod._cpu_supports("_is_avx512_bf16_supported")
    assert not llm_mod._cpu_supports("_is_vnni_supported")
    assert llm_mod.int8_activation_dtype() == torch.float32
    # oneDNN held to AVX2 alone: the same
    monkeypatch.setattr(llm_mod, "aten_capability", lambda: "AVX512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert llm_mod.int8_activation_dtype() == torch.float32


@pytest.mark.skipif(torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"),
                    reason="ATEN_CPU_CAPABILITY=avx2 needs an x86-64 CPU with AVX2")
def test_aten_capability_reads_torch_and_its_environment_variable():
    import os
    import subprocess
    import sys

    assert llm_mod.aten_capability() == torch.backends.cpu.get_cpu_capability()
    code = ("from glta_align import llm; import torch; "
            "print(llm.aten_capability(), llm._cpu_supports('_is_avx512_bf16_supported'), "
            "llm.int8_activation_dtype())")
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLTA_INT8_ACTIVATIONS", "ONEDNN_MAX_CPU_ISA")}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "ATEN_CPU_CAPABILITY": "avx2"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["AVX2", "False", "torch.float32"]


def test_small_gains_keep_fp32(monkeypatch):
    monkeypatch.setattr(llm_mod, "_time_products",
                        lambda s, p, r, n: {"float32": 100.0, "bfloat16": 105.0}[p])
    monkeypatch.setattr(llm_mod, "_cpu_supports", lambda name: True)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: False)
    assert precision_probe(SHAPE)["choice"] == "float32"


def test_probe_failure_falls_back_to_the_flag_rule(monkeypatch):
    def broken(*args):
        raise RuntimeError("no kernel")

    monkeypatch.setattr(llm_mod, "_time_products", broken)
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu", lambda: False)
    monkeypatch.setattr(llm_mod, "_int8_faster_on_cpu", lambda: True)
    out = precision_probe(SHAPE)
    assert out["source"] == "flags" and out["choice"] == "int8" and "no kernel" in out["error"]
    assert not probe_cache_path().exists()  # a failure is not cached
    monkeypatch.setattr(llm_mod, "_bf16_faster_on_cpu", lambda: True)
    assert precision_probe(SHAPE)["choice"] == "bfloat16"


def test_unreadable_cache_is_measured_again(monkeypatch):
    path = probe_cache_path()
    path.parent.mkdir(parents=True)
    path.write_text("{torn")
    monkeypatch.setattr(llm_mod, "_time_products", lambda s, p, r, n: 1.0)
    assert precision_probe(SHAPE)["source"] == "probe"


def test_real_probe_on_tiny_shapes():
    out = precision_probe(SHAPE, rows=16, repeats=1)
    assert out["choice"] in out["gflops"] and all(v > 0 for v in out["gflops"].values())


def test_load_llm_auto_uses_the_probe(tiny_dir, monkeypatch):
    monkeypatch.setattr(llm_mod, "precision_probe",
                        lambda config, lora=None: {"choice": "bfloat16", "gflops": {},
                                                   "source": "probe", "key": "k"})
    llm = load_llm(tiny_dir, dtype="auto", device="cpu")
    assert llm.dtype == torch.bfloat16 and llm.precision_probe["choice"] == "bfloat16"
    monkeypatch.setenv("GLTA_DTYPE_PROBE", "0")
    off = load_llm(tiny_dir, dtype="auto", device="cpu")
    assert off.precision_probe is None
    given = load_llm(tiny_dir, dtype="float32", device="cpu")
    assert given.precision_probe is None and given.dtype == torch.float32


def test_load_llm_reports_progress(tiny_dir, monkeypatch):
    monkeypatch.setattr(llm_mod, "precision_probe",
                        lambda config, lora=None: {"choice": "float32", "source": "cache",
                                                   "gflops": {"float32": 300.0}, "key": "k"})
    monkeypatch.setattr(llm_mod, "attention_probe", lambda model: {
        "choice": "eager", "ms": {"eager": 1.0, "sdpa": 2.0}, "source": "cache", "key": "a"})
    events = []
    load_llm(tiny_dir, dtype="auto", device="cpu", progress=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "step" in kinds
    assert {e.stage for e in events} == {"llm"}
    info = [e.message for e in events if e.kind == "info"]
    assert info == ["precision float32 (cache; GFLOP/s float32 300)",
                    "attention eager (cache; eager 1.0 ms, sdpa 2.0 ms)"]
    assert "float32" in events[-1].message and "eager attention" in events[-1].message


def test_attention_probe_picks_the_faster_kernel_and_caches_it(tiny, monkeypatch):
    from glta_align.llm import attention_probe

    calls = []
    fast = {"eager": 0.010, "eager_grouped": 0.012, "sdpa": 0.020}

    def fake_time(module, fn, mask, q, k, v):
        name = ("sdpa" if mask.dtype == torch.bool else
                "eager_grouped" if fn is llm_mod.grouped_eager_attention else "eager")
        calls.append(name)
        assert q.shape == (8, 4, 128, 16) and k.shape == (8, 2, 160, 16)
        return fast[name]

    monkeypatch.setattr(llm_mod, "_time_attention", fake_time)
    first = attention_probe(tiny.model)
    assert first["source"] == "probe" and first["choice"] == "eager"
    assert first["ms"] == {"eager": 10.0, "eager_grouped": 12.0, "sdpa": 20.0}
    # one warm-up call each sizes its 50 ms window: 5, 5 and 3 calls per measurement
    assert first["passes"] == {"eager": 5, "eager_grouped": 5, "sdpa": 3}
    assert len(calls) == 3 + 3 * (5 + 5 + 3) and first["attempts"] == 1
    path = probe_cache_path().with_name("attention-probe.json")
    assert json.loads(path.read_text())[first["key"]]["choice"] == "eager"
    again = attention_probe(tiny.model)
    assert again["source"] == "cache" and again["choice"] == "eager" and len(calls) == 42
    # the faster eager kernel wins
    fast.update(eager_grouped=0.008)
    grouped = attention_probe(tiny.model, refresh=True)
    assert grouped["choice"] == "eager_grouped"
    # neither eager kernel 10% faster: transformers' default stays
    fast.update(eager=0.019, eager_grouped=0.0195)
    close = attention_probe(tiny.model, refresh=True)
    assert close["source"] == "probe" and close["choice"] == "sdpa"
    # a load average above the CPU count alone: measured once, used, not cached
    monkeypatch.setattr(llm_mod, "_busy_load", lambda: 9.0)
    fast.update(eager=0.001)  # eager_grouped stays at 19.5 ms
    busy = attention_probe(tiny.model, refresh=True)
    assert busy["choice"] == "eager" and busy["busy_load"] == 9.0 and busy["attempts"] == 1
    assert "measured_choice" not in busy
    assert json.loads(path.read_text())[first["key"]]["choice"] == "sdpa"
    # other processes competing through every attempt: the figures are reported, the dtype
    # rule decides (the tiny model is fp32: sdpa), nothing is cached
    monkeypatch.setattr(llm_mod, "_busy_load", lambda: None)
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: 0.6)
    burst = attention_probe(tiny.model, refresh=True)
    assert burst["measured_choice"] == "eager" and burst["choice"] == "sdpa"
    assert burst["busy_share"] == 0.6 and burst["ms"]["eager"] == 1.0
    assert burst["attempts"] == 1 + llm_mod.PROBE_BUSY_RETRIES
    assert json.loads(path.read_text())[first["key"]]["choice"] == "sdpa"
    # in bf16 the rule picks the grouped eager kernel (sdpa was 3.2x slower on the Xeon)
    assert llm_mod.attention_rule(torch.bfloat16) == "eager_grouped"
    assert llm_mod.attention_rule(torch.float32) == "sdpa"


def test_attention_probe_keeps_each_kernels_best_over_a_busy_attempt(tiny, monkeypatch):
    # the Xeon's start-up once overlapped an 18 s burst of other work: eager measured
    # 171.9 ms (quiet: 5.5) and sdpa was chosen. With a quiet second attempt each kernel
    # keeps its best and the quiet ranking decides
    from glta_align.llm import attention_probe

    quiet = {"eager": 0.0055, "eager_grouped": 0.0046, "sdpa": 0.0146}
    loaded = {"eager": 0.1719, "eager_grouped": 0.1420, "sdpa": 0.1330}
    shares = iter([0.7, 0.0])
    monkeypatch.setattr(llm_mod, "_others_share", lambda before, after=None: next(shares))
    attempt = {"now": quiet}  # warm-up calls run quiet: the windows keep their size

    def fake_time(module, fn, mask, q, k, v):
        name = ("sdpa" if mask.dtype == torch.bool else
                "eager_grouped" if fn is llm_mod.grouped_eager_attention else "eager")
        return attempt["now"][name]

    def sleep(seconds):
        attempt["now"] = quiet

    monkeypatch.setattr(llm_mod, "_time_attention", fake_time)
    monkeypatch.setattr("time.sleep", sleep)
    real_measure = llm_mod._measure_until_quiet

    def loaded_first(measure):
        attempt["now"] = loaded
        return real_measure(measure)

    monkeypatch.setattr(llm_mod, "_measure_until_quiet", loaded_first)
    got = attention_probe(tiny.model)
    assert got["choice"] == "eager_grouped" and got["attempts"] == 2
    assert got["ms"] == {"eager": 5.5, "eager_grouped": 4.6, "sdpa": 14.6}
    assert "busy_share" not in got and attention_probe(tiny.model)["source"] == "cache"


def test_attention_probe_really_times_every_kernel(tiny):
    from glta_align.llm import attention_probe

    got = attention_probe(tiny.model, batch=2, queries=8, prefix=4, repeats=1)
    assert got["source"] == "probe" and got["choice"] in ("eager", "eager_grouped", "sdpa")
    assert set(got["ms"]) == {"eager", "eager_grouped", "sdpa"}
    assert all(v > 0 for v in got["ms"].values())
    assert got["dtype"] == "torch.float32" and got["heads"] == [4, 2, 16]


def test_attention_probe_falls_back_to_sdpa(tiny, monkeypatch):
    from glta_align.llm import attention_probe

    no_attention = torch.nn.Sequential(torch.nn.Linear(2, 2))
    got = attention_probe(no_attention)
    assert got["choice"] == "sdpa" and got["source"] == "none" and "eager" in got["error"]

    def broken(*args):
        raise RuntimeError("kernel missing")

    monkeypatch.setattr(llm_mod, "_time_attention", broken)
    got = attention_probe(tiny.model)
    assert got["choice"] == "sdpa" and got["source"] == "none"
    assert "kernel missing" in got["error"]
    assert not probe_cache_path().with_name("attention-probe.json").exists()


def test_load_llm_attention_choice(tiny_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(llm_mod, "attention_probe", lambda model: calls.append(1) or {
        "choice": "eager", "ms": {"eager": 1.0, "sdpa": 2.0}, "source": "probe", "key": "k"})
    auto = load_llm(tiny_dir, dtype="float32", device="cpu")
    assert auto.train_attention == "eager" and auto.attention_probe["choice"] == "eager"
    assert calls == [1]
    given = load_llm(tiny_dir, dtype="float32", device="cpu", attention="sdpa")
    assert given.train_attention == "sdpa" and given.attention_probe is None and calls == [1]
    monkeypatch.setenv("GLTA_ATTENTION_PROBE", "0")
    off = load_llm(tiny_dir, dtype="float32", device="cpu")
    assert off.train_attention == "sdpa" and off.attention_probe is None and calls == [1]
    with pytest.raises(llm_mod.LLMError, match=r"attention must be one of .*'flash'"):
        load_llm(tiny_dir, dtype="float32", device="cpu", attention="flash")


@pytest.mark.parametrize("heads, kv", [(4, 2), (6, 2), (4, 4)])
def test_grouped_eager_attention_equals_eager(heads, kv):
    from transformers.models.llama.modeling_llama import eager_attention_forward

    from glta_align.llm import grouped_eager_attention

    module = torch.nn.Module()
    module.num_key_value_groups = heads // kv
    module.eval()
    gen = torch.Generator().manual_seed(0)
    B, L, P, d = 3, 5, 7, 8
    S = P + L
    q = torch.randn(B, heads, L, d, generator=gen)
    k, v = (torch.randn(B, kv, S, d, generator=gen) for _ in range(2))
    allowed = torch.arange(S)[None, :] <= torch.arange(L)[:, None] + P
    allowed = allowed[None, None].repeat(B, 1, 1, 1)
    allowed[1, ..., :3] = False  # a left-padded row
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)

    def run(fn):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        out, weights = fn(module, qq, kk, vv, mask, scaling=d ** -0.5, dropout=0.0)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        return out, weights, qq.grad, kk.grad, vv.grad

    ref, got = run(eager_attention_forward), run(grouped_eager_attention)
    assert got[0].shape == (B, L, heads, d) and got[1].shape == (B, heads, L, S)
    for a, b in zip(ref, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_a_model_trains_the_same_with_grouped_eager_attention(tiny):
    # the registered kernel runs inside transformers' Llama layers (mask included) and gives
    # eager's hidden states and input gradients
    import dataclasses

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 6, tiny.hidden_size, generator=gen) * 0.02
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])

    def run(impl):
        llm = dataclasses.replace(tiny, train_attention=impl)
        xe = x.clone().requires_grad_()
        with llm.attention_scope():
            out = llm.backbone(inputs_embeds=xe, attention_mask=mask).last_hidden_state
        (out[:, 2:] ** 2).sum().backward()
        return out[:, 2:].detach(), xe.grad[:, 2:]

    eager, grouped = run("eager"), run("eager_grouped")
    assert tiny.causal_lm.config._attn_implementation != "eager_grouped"  # scope restored
    for a, b in zip(eager, grouped, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
