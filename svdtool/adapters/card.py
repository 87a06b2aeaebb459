"""The README.md model card of an init folder: what was done, and how to train from it."""

from __future__ import annotations

from svdtool.quant.load_config import TORCH_DTYPES, bnb_config_python
from svdtool.results.init import InitResult

_TITLES = {
    "pissa": "PiSSA",
    "milora": "MiLoRA",
    "svd-lora-fa": "SVD-initialised LoRA-FA",
    "olora": "OLoRA",
    "mica": "MiCA",
    "orthogonal": "Orthogonal",
    "lora-one": "LoRA-One",
    "loftq": "LoftQ",
    "qpissa": "QPiSSA",
}


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def render_card(res: InitResult, folder_name: str) -> str:
    """Markdown for ``DIR/README.md``. ``folder_name`` is how the card refers to DIR in examples."""
    s = res.settings
    m = res.manifest
    title = _TITLES.get(s.method, s.method)
    d = folder_name
    a = f"{d}/{res.adapter_dir}"
    source = m.model + (f" (revision {m.sha})" if m.sha else "")
    algos = ", ".join(f"{k} ×{v}" for k, v in m.methods.items())
    energy = [x.energy_share for x in res.layers]
    svd = s.svd if s.svd == "exact" else f"randomized (oversample {s.oversample}, niter {s.niter}, seed {s.seed})"
    scaling = f"α/√r = {_fmt(s.scaling)}" if s.use_rslora else f"α/r = {_fmt(s.scaling)}"
    causal = res.task_type == "CAUSAL_LM"
    auto = "AutoModelForCausalLM" if causal else "AutoModel"
    lines = [
        "---",
        "library_name: peft",
        "tags: [svdtool, lora, " + s.method + "]",
        "---",
        "",
        f"# {title} initialisation of {m.model}",
        "",
        f"Written by `{' '.join(m.command) or 'svdtool init'}` (svdtool {m.tool_version}, {m.started}).",
        "",
        f"- **Method:** {title}: {res.method_summary}.",
        f"- **Paper:** {res.paper}.",
        f"- **Source:** {source}.",
        f"- **Rank** r = {s.rank}, **alpha** α = {_fmt(s.alpha)}, rsLoRA {'on' if s.use_rslora else 'off'}: "
        f"scaling s = {scaling}.",
        f"- **Targets:** {len(res.layers)} weights; `target_modules` = {', '.join(s.target_modules)}.",
        f"- **SVD:** {svd}; algorithms: {algos}.",
        f"- **Adapter energy share** ‖s·B·A‖²/‖W‖²: min {_fmt(min(energy))}, max {_fmt(max(energy))}.",
        *_allocation(res),
    ]
    if res.base == "original":
        return "\n".join(lines + kept_base_sections(res, d, a, auto))
    lines += [
        _residual_line(res),
        "",
        "## Layout",
        "",
        "| path | what |",
        "|---|---|",
        f"| `{d}/` | the residual base model: `config.json` and tokenizer as in the source, "
        f"`model-*.safetensors` + index |",
        f"| `{a}/` | the initialised adapter (`adapter_config.json` with `init_lora_weights: true`, "
        f"`adapter_model.safetensors`) |",
        f"| `{d}/svdtool.json` | per-layer singular values, errors, algorithm, versions, command line |",
        "",
        "Load the adapter **on this residual base**, never on the original model: on the original, the "
        "singular components the adapter holds would count twice. `base_model_name_or_path` in the adapter config is "
        f"the absolute path of this folder at creation (`{res.base_model_name_or_path}`); if you move or "
        "upload the folder, pass the base explicitly as below or edit that field.",
        "",
    ]
    if res.frozen:
        lines += _frozen_section(res.frozen, s.rank, s.alpha)
    q = res.quantization
    if q:
        lines += _quant_section(q)
        lines += [
            "## Train with PEFT",
            "",
            "```python",
            "import torch",
            f"from transformers import {auto}, BitsAndBytesConfig",
            "from peft import PeftModel",
            "",
            f"bnb = {bnb_config_python(q)}",
            f'base = {auto}.from_pretrained("{d}", dtype=torch.{TORCH_DTYPES[q["load_dtype"]]}, '
            "quantization_config=bnb)",
            f'model = PeftModel.from_pretrained(base, "{a}", is_trainable=True)',
        ]
    else:
        lines += _peft_snippet(auto, d, a, "")
    if res.frozen:
        lines += [
            "for name, param in model.named_parameters():",
            '    if "lora_A" in name: param.requires_grad_(False)  # LoRA-FA: A stays frozen',
        ]
    lines += [
        "```",
        "",
        "Keep `lora_dropout` at 0, as written: the adapter holds part of the original weights.",
        "",
        "## Train with Axolotl",
        "",
        "```yaml",
        f"base_model: {d}",
        "adapter: lora",
        f"lora_model_dir: {a}   # the adapter's r, alpha and targets come from here",
        "```",
        "",
        "## Train with LLaMA-Factory",
        "",
        "```yaml",
        f"model_name_or_path: {d}",
        f"adapter_name_or_path: {a}",
        "finetuning_type: lora",
        "pissa_init: false     # already initialised: do not run PiSSA again",
        "pissa_convert: true   # save the trained adapter as a plain LoRA on the original model",
        "```",
        "",
        "## Back to a plain LoRA on the original model",
        "",
        "The trained adapter belongs to the residual base. PEFT turns it into a rank-2r LoRA for the "
        "*original* model (A' = [A; A₀], B' = [B, −B₀], r and α doubled, α×√2 with rsLoRA):",
        "",
        "```python",
        f'model.save_pretrained("trained-lora", path_initial_model_for_weight_conversion="{a}")',
        "```",
        "",
        f"This rewrites `{a}/adapter_config.json` (same values, `init_lora_weights: true`); keep a copy of "
        f"`{a}` if you need it byte for byte. Then load `trained-lora` on `{m.model}`.",
        "",
        *_check(
            d,
            "compares W_res + s·B·A with the original weights layer by layer, and the logits of residual + "
            "adapter with those of the original model."
            + (" Here both replay the 4-bit load: each must beat the original weights loaded the same way." * bool(q)),
        ),
    ]
    return "\n".join(lines)


def _allocation(res: InitResult) -> list[str]:
    s = res.settings
    if s.rank_alloc == "uniform":
        return []
    ranks = sorted(s.rank_pattern.values())
    budget = "rank budget (Σ ranks, PEFT's EVA redistribution)" if s.rank_alloc == "eva" else "parameter budget"
    return [
        f"- **Rank allocation** `--rank-alloc {s.rank_alloc}`: ranks {ranks[0]}–{ranks[-1]} within the {budget} "
        f"of r = {s.rank} everywhere; per-module r and α in `rank_pattern`/`alpha_pattern` (s is the same "
        "for every module)."
    ]


def kept_base_sections(res: InitResult, d: str, a: str, auto: str) -> list[str]:
    """Layout and training for methods that leave the base untouched: the adapter goes on the original model."""
    base = res.base_model_name_or_path
    start = (
        "The starting model is the original **plus** s·B·A (one gradient step, by design): it is not a no-op."
        if res.changes_output
        else f"s·B·A = 0 at init (largest ‖s·B·A‖/‖W‖ = {res.max_reconstruction_error:.1e}), so training starts "
        "from exactly the original model."
    )
    low_mem = ", low_cpu_mem_usage=True" if res.init_lora_weights == "mica" else ""
    lines = [
        f"- **Base:** untouched. Only the adapter is written; its `base_model_name_or_path` is the original, "
        f"`{base}`. {start}",
        "",
        "## Layout",
        "",
        "| path | what |",
        "|---|---|",
        f"| `{a}/` | the initialised adapter (`adapter_config.json` with `init_lora_weights: "
        f"{_json(res.init_lora_weights)}`, `adapter_model.safetensors`, float32) |",
        f"| `{d}/svdtool.json` | per-layer values, algorithm, versions, command line |",
        "",
        "Load the adapter on the **original** model. There is no residual copy of the base.",
        "",
    ]
    if res.init_lora_weights == "mica":
        lines += [
            "## MiCA needs PEFT ≥ 0.20",
            "",
            "`lora_B` holds the minor singular vectors and must stay **frozen**; only `lora_A` trains. The config "
            'says `init_lora_weights: "mica"`, so PEFT ≥ 0.20 wraps each layer in its MiCA variant, which keeps '
            '`lora_B` frozen (older PEFT refuses the value: "Unknown initialization"). Load with '
            "`low_cpu_mem_usage=True` so PEFT does not recompute the SVD (the saved B is loaded either way).",
            "",
        ]
    lines += _peft_snippet(auto, base, a, low_mem)
    lines += [
        "```",
        "",
        "## Train with Axolotl",
        "",
        "```yaml",
        f"base_model: {base}",
        "adapter: lora",
        f"lora_model_dir: {a}",
        "```",
        "",
        *_check(
            d,
            "checks s·B·A per layer and compares the outputs of the original + adapter (through PEFT) with "
            + ("the original plus s·B·A merged by svdtool." if res.changes_output else "the original model."),
        ),
    ]
    return lines


def _peft_snippet(auto: str, base: str, adapter: str, kwargs: str) -> list[str]:
    """The start of the "Train with PEFT" block (the caller closes the code fence)."""
    return [
        "## Train with PEFT",
        "",
        "```python",
        f"from transformers import {auto}",
        "from peft import PeftModel",
        "",
        f'base = {auto}.from_pretrained("{base}", dtype="auto")',
        f'model = PeftModel.from_pretrained(base, "{adapter}", is_trainable=True{kwargs})',
    ]


def _check(folder: str, what: str) -> list[str]:
    return ["## Check", "", "```", f"svdtool verify {folder}", "```", "", what, ""]


def _json(x: bool | str) -> str:
    return ("true" if x else "false") if isinstance(x, bool) else f'"{x}"'


def _frozen_section(frozen: list[str], rank: int, alpha: float) -> list[str]:
    names = ", ".join(f"`{f}`" for f in frozen)
    return [
        "## A is frozen",
        "",
        f"This is LoRA-FA: {names} must stay **frozen** during training and only `lora_B` trains. No PEFT "
        "config field can say so, so the trainer must do it: either",
        "",
        "```python",
        "for name, param in model.named_parameters():",
        '    if "lora_A" in name: param.requires_grad_(False)',
        "```",
        "",
        "or use PEFT's LoRA-FA optimizer, which freezes A and projects B's gradient:",
        "",
        "```python",
        "from peft.optimizers import create_lorafa_optimizer",
        f"optimizer = create_lorafa_optimizer(model, r={rank}, lora_alpha={_fmt(alpha)}, lr=2e-5)",
        "```",
        "",
    ]


def _residual_line(res: InitResult) -> str:
    q = res.quantization
    if not q:
        return (
            f"- **Residual** W_res = W − s·B·A in {res.residual_dtype} (as the source); adapter in float32. "
            f"Largest ‖W − (W_res + s·B·A)‖/‖W‖ = {res.max_reconstruction_error:.2e} "
            f"(tolerance {res.reconstruction_tol:g})."
        )
    return (
        f"- **Residual** W_res in {res.residual_dtype}, meant to be loaded in 4-bit NF4 (Q below); adapter in float32. "
        f"‖W − (Q(W_res) + s·B·A)‖/‖W − Q(W)‖ per layer: median {q['median_ratio']:.4f}, max {q['max_ratio']:.4f} "
        f"({q['iters']} alternations; below 1 is better than plain NF4 of the original weights)."
    )


def _quant_section(q: dict) -> list[str]:  # type: ignore[type-arg]
    dq = "with" if q["double_quant"] else "without"
    return [
        "## Load the base in 4-bit NF4, exactly as fitted",
        "",
        f"The adapter was fitted to Q(W_res): the NF4 quantisation (block 64, {dq} double quantisation) that "
        f"bitsandbytes applies to W_res as stored ({q['load_dtype']}), simulated bit for bit. Load the base with "
        "exactly this config; then the 4-bit codes and the dequantised values are those the adapter was fitted to:",
        "",
        "```python",
        "import torch",
        "from transformers import BitsAndBytesConfig",
        "",
        f"bnb = {bnb_config_python(q)}",
        "```",
        "",
        f"and `dtype=torch.{TORCH_DTYPES.get(q['load_dtype'], q['load_dtype'])}`. Another dtype or double-quant "
        "setting gives the same codes at best, with different scales; loaded in full precision, W_res + s·B·A is "
        "not the original model (LoftQ's W_res is not W − s·B·A at all).",
        "",
    ]
