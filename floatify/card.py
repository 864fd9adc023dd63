"""The model card (``README.md``) of a saved model: what it is, its dial, how to load it, the citation.

Example:
    >>> from floatify.card import model_card
    >>> config = {"architecture": {"name": "resnet18"}, "preprocessing": {"input_size": [3, 32, 32]},
    ...           "training": {"dataset": "cifar10", "eps": 8 / 255}}
    >>> model_card(config).splitlines()[8]
    '# resnet18 with a FLOAT dial (cifar10)'
"""

from __future__ import annotations

from floatify.artifact import PLOT_FILE

__all__ = ["model_card", "CITATION"]

CITATION = """@inproceedings{kundu2023float,
  title     = {FLOAT: Fast Learnable Once-for-All Adversarial Training for Tunable Trade-off between Accuracy
               and Robustness},
  author    = {Kundu, Souvik and Sundaresan, Sairam and Pedram, Massoud and Beerel, Peter A.},
  booktitle = {IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year      = {2023}
}"""


def model_card(config: dict, report=None) -> str:
    """The ``README.md`` of a saved model: what it is, its dial, how to load it, the citation."""
    arch = config.get("architecture") or {}
    name = arch.get("name", "a custom model")
    training = config.get("training") or {}
    dataset = training.get("dataset")
    lines = ["---", "library_name: floatify", "tags:", "- adversarial-robustness", "- floatify",
             "- image-classification", "---", "",
             f"# {name} with a FLOAT dial" + (f" ({dataset})" if dataset else ""), ""]
    lines += [_what_it_is(config, name), ""]
    if report is not None:
        lines += ["## The dial", "", report.to_markdown(audit=False).strip(), "", f"![trade-off]({PLOT_FILE})", ""]
        if getattr(report, "audit", None) is not None:
            lines += ["## Evaluation audit", "", report.audit_markdown().strip(), ""]
    lines += ["## Use it", "", "```python", "import floatify", "", 'model = floatify.load("<this folder or '
              'hf-hub:owner/name>")', "with floatify.lam(0.5):          # 0: clean accuracy ... 1: robustness",
              "    logits = model(images)        # images in [0, 1]; normalisation is inside the model", "```", ""]
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _what_it_is(config: dict, name: str) -> str:
    pre, training = config["preprocessing"], config.get("training") or {}
    parts = [f"`{name}` converted with [floatify](https://pypi.org/project/floatify/): one network whose operating "
             f"point λ ∈ [0, 1] trades clean accuracy (λ = 0) for adversarial robustness (λ = 1) at inference "
             f"(FLOAT, WACV 2023)."]
    if config.get("frozen"):
        parts.append(f"This copy is frozen at λ = {config['frozen']['lam']:g} (a plain, deterministic model).")
    if config.get("sparsity"):
        parts.append(f"Pruned to {config['sparsity']['density']:.1%} of its Conv/Linear weights (FLOATS).")
    if training.get("eps") is not None:
        parts.append(f"Trained against L∞ eps = {float(training['eps']):.4g} (pixel units).")
    if pre.get("input_size"):
        parts.append(f"Inputs: {pre['input_size'][0]}×{pre['input_size'][1]}×{pre['input_size'][2]} images in [0, 1].")
    return " ".join(parts)
