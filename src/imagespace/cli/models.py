"""The models command: what each registered model is, without loading any of them."""

from __future__ import annotations

from ._common import JsonOption, app, console, emit


@app.command()
def models(as_json: JsonOption = False) -> None:
    """The models you can name with --model: input size, dimensions and measured figures."""
    from ..models import DEFAULT_MODEL, list_models, model_info

    payload = {"default": DEFAULT_MODEL,
               "models": [{"name": name, "default": name == DEFAULT_MODEL, **model_info(name)} for name in list_models()]}

    def human(p: dict) -> None:
        c = console()
        for m in p["models"]:
            parts = [f"input {m.get('input_size', '?')} px, {m.get('dim', '?')} dimensions"]
            if "clothing10_map" in m:
                parts.append(f"clothing10 P@1 {m['clothing10_p1']:.3f} mAP {m['clothing10_map']:.3f}")
            if "flowers12_map" in m:
                parts.append(f"flowers12 P@1 {m['flowers12_p1']:.3f} mAP {m['flowers12_map']:.3f}")
            if "cifar10_knn" in m:
                parts.append(f"cifar10 kNN {m['cifar10_knn']:.3f}")
            if "small_jpeg_rate_x_lite0" in m:
                parts.append(f"small JPEGs at {m['small_jpeg_rate_x_lite0']:.2f}x Lite0's rate")
            mark = " (default)" if m["default"] else ""
            c.print(f"{m['name']}{mark}: " + "; ".join(parts), highlight=False, markup=False, soft_wrap=True)
        c.print("Measured with python -m benchmarks.bench_pipelines (clothing10) and bench_networks (the rest; see "
                "the README). A trained model folder "
                "(imagespace train --out DIR) works wherever a name does.", highlight=False, soft_wrap=True)

    emit(as_json, payload, human)
