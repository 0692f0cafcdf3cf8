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
            extra = "  ".join(f"{k} {v}" for k, v in m.items() if k not in ("name", "default", "input_size", "dim"))
            mark = " (default)" if m["default"] else ""
            c.print(f"{m['name']}{mark}: input {m.get('input_size', '?')} px, {m.get('dim', '?')} dimensions"
                    + (f"; {extra}" if extra else ""), highlight=False, markup=False)
        c.print("A trained model folder (imagespace train --out DIR) works wherever a name does.", highlight=False)

    emit(as_json, payload, human)
