"""Checks the commands run before any model loads, so a wrong name is one clear line, not a traceback
from deep inside ``from_pretrained`` (printed once per process under ``accelerate launch``)."""

from __future__ import annotations

import os

from .arguments import UsageError

TINY = "tiny"  # as a model name: a random tiny model built from a config (offline smoke runs and tests)


def check_pretrained(name: str | None, flag: str, *, marker: str = "config.json", tiny: bool = True, hint: str | None = None) -> None:
    """``name`` is a folder holding ``marker`` or a Hub repo whose ``marker`` can be fetched (or is
    cached when offline); ``tiny`` (where ``tiny=True``) is always fine. ``marker``:
    ``config.json`` for transformers models, ``model_index.json`` for diffusers pipelines. ``hint``:
    what to do offline instead, when ``tiny`` does not apply."""
    if name is None or (tiny and name == TINY):
        return
    offline_hint = f"; offline, pass {flag} {TINY} for a random tiny model" if tiny else (f"; {hint}" if hint else "")
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, marker)):
            raise UsageError(f"{flag} {name}: the folder has no {marker}, so it is not a saved model{offline_hint}")
        return
    from ..model_card import hub_id

    if hub_id(name) is None:  # a path, not a Hub id
        raise UsageError(f"{flag} {name}: no such folder{offline_hint}")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        hf_hub_download(name, marker)
    except GatedRepoError:
        raise UsageError(f"{flag} {name}: a gated repository; accept its terms on the Hub and log in (hf auth login)") from None
    except RepositoryNotFoundError:
        raise UsageError(f"{flag} {name}: no such model on the Hub (or it is private: log in){offline_hint}") from None
    except LocalEntryNotFoundError:
        raise UsageError(f"{flag} {name}: not a local folder, and the Hub cannot be reached with it not in the cache{offline_hint}") from None
    except (HfHubHTTPError, OSError) as err:
        raise UsageError(f"{flag} {name}: cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}){offline_hint}") from None


def check_spacy_pipeline(name: str, flag: str = "--spacy_pipeline") -> str:
    """The installed pipeline ``name`` resolves to (``auto``: the first English one), or a UsageError."""
    from ..nlp import resolve_spacy_pipeline

    try:
        return resolve_spacy_pipeline(name, flag)
    except (OSError, ImportError) as err:
        raise UsageError(str(err)) from None


def is_generative_checkpoint(model_name: str) -> bool:
    """Whether ``model_name`` is a generative VLM (image-text-to-text, e.g. LLaVA) rather than a dual encoder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_name)
    return any(name.endswith("ForConditionalGeneration") for name in config.architectures or []) or config.model_type in ("llava", "llava_next")
