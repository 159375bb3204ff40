"""The model registry: a plain dict, whose keys are the CLI's choices (DiT style).

Each entry names the class, the config node it reads (``cfg.model.<config>``) and its variants:
named overrides of that config (Table 1's rows are variants of one network). A suite lists
``name`` (every variant) or ``name:variant``.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass

from omegaconf import OmegaConf

from baselines.bm25 import BM25
from baselines.hllm import HLLM
from baselines.popularity import Popularity
from baselines.query_pop import QueryPop
from baselines.sasrec import SASRec
from karma.model import MULTIMODAL_VARIANTS, ContinuousTokenModel
from karma.model import VARIANTS as KARMA_VARIANTS


@dataclass(frozen=True)
class ModelSpec:
    cls: type
    config: str  # attribute of cfg.model holding the typed config
    variants: dict  # variant name -> config overrides
    needs_text: bool = False  # True: skipped (shown as not applicable) on ID-only datasets
    needs_images: bool = False  # True: skipped on datasets without item images
    # reuse this (model, variant)'s search instead of its own (every variant but that one itself)
    tuned_like: tuple[str, str] | None = None
    # How the model uses the query: "ignored" (query-blind: one run, in mode none, stands for every
    # mode, since the impressions, splits and exposures do not depend on the mode), "required" (runs
    # in the search modes only), "optional" (runs in every mode of the suite, without a query in none).
    query_use: str = "optional"
    # True: built from the catalog itself, ``cls(log, config, cache_dir)`` (backbones, per-catalog caches);
    # False: ``cls(n_items, config)``, fitted from the training split by its own train_dataset
    reads_catalog: bool = False
    external: bool = False  # named on the command line by its import path (bring your own model)
    default_config: object = None  # external models: their ``Config()`` (they have no node in cfg.model)


ACTION_ONLY = ("action_llm", "default")
MODELS: dict[str, ModelSpec] = {
    "popularity": ModelSpec(Popularity, "popularity", {"default": {}}, query_use="ignored"),  # sanity floor
    # what the query alone gives away: its item group ranked by popularity, and its lexical match
    "query_pop": ModelSpec(QueryPop, "query_pop", {"default": {}}, needs_text=True, query_use="required"),
    "bm25": ModelSpec(BM25, "bm25", {"default": {}}, needs_text=True, query_use="required"),
    # Kang & McAuley 2018, CE / sampled softmax
    "sasrec": ModelSpec(SASRec, "sasrec", {"default": {}}, query_use="ignored"),
    # The action-only LLM is KARMA's network with every decodability loss off (same inference path);
    # "warmup" adds only KARMA's stage-1 semantic warm-up, so its effect is not credited to Tasks 1/2.
    # Table 1's rows differ only in train-only losses, so they share the action-only LLM's selected
    # settings (lr, score scale): a row's delta is its losses' effect, not a tuning advantage.
    "action_llm": ModelSpec(ContinuousTokenModel, "karma", {"default": KARMA_VARIANTS["action_only"],
                                                            "warmup": KARMA_VARIANTS["warmup"]},
                            needs_text=True, reads_catalog=True, tuned_like=ACTION_ONLY),
    "hllm": ModelSpec(HLLM, "hllm", {"default": {}}, needs_text=True, reads_catalog=True),  # item LLM + user LLM, InfoNCE (scaled down)
    "karma": ModelSpec(ContinuousTokenModel, "karma",
                       {k: v for k, v in KARMA_VARIANTS.items() if k not in ("action_only", "warmup")}, needs_text=True,
                       reads_catalog=True, tuned_like=ACTION_ONLY),
    # Table 1's multimodal row: KARMA + visual reconstruction.
    "karma_visual": ModelSpec(ContinuousTokenModel, "karma", {"visual": MULTIMODAL_VARIANTS["visual"]},
                              needs_text=True, needs_images=True, reads_catalog=True, tuned_like=ACTION_ONLY),
    # Table 2: KARMA with generator readouts of h (its main path is KARMA's), evaluated with the
    # discriminative u and with each generated embedding ("generators"); and KARMA trained with a
    # generator of its retrieval embedding as an objective, which retrieves with it ("objective_*").
    "karma_gen": ModelSpec(ContinuousTokenModel, "karma",
                           {k: v for k, v in MULTIMODAL_VARIANTS.items() if k == "generators" or k.startswith("objective_")},
                           needs_text=True, tuned_like=ACTION_ONLY, reads_catalog=True),
}


def infers_like_action_only(model: str, variant: str) -> bool:
    """Whether a (model, variant) scores with the action-only LLM's inference path: every variant of
    KARMA's network that retrieves with the discriminative u (its extra heads are train-only), so its
    per-request latency is action-only's (``benchmark.latency`` checks the scores are identical)."""
    spec = MODELS.get(model)
    if spec is None or spec.cls is not ContinuousTokenModel or variant not in spec.variants:
        return False
    return spec.variants[variant].get("retrieval_objective", "discriminative") == "discriminative"


def tuned_source(model: str, variant: str) -> tuple[str, str] | None:
    """The (model, variant) whose tuning search selects this one's settings, None for its own search."""
    source = MODELS[model].tuned_like
    return None if source is None or source == (model, variant) else source


@dataclass
class NoSettings:
    """The config of an external model that declares none."""


def model_spec(name: str) -> ModelSpec:
    """The registry entry of ``name``; a dotted name (``package.module.Class``) is an external model,
    imported and registered on first use. Its class may declare ``Config`` (a dataclass; its defaults
    are the settings), ``query_use`` (default "ignored": query-blind), ``needs_text`` and
    ``reads_catalog`` (then it is built as ``cls(log, config, cache_dir)``, else ``cls(n_items, config)``)."""
    if name in MODELS:
        return MODELS[name]
    module_name, _, class_name = name.rpartition(".")
    if not module_name:
        raise KeyError(f"unknown model {name!r}; valid models: {', '.join(m for m in MODELS if '.' not in m)}, "
                       "or an import path package.module.Class")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as err:
        raise KeyError(f"cannot import model {name!r}: {err}") from None
    config_cls = getattr(cls, "Config", NoSettings)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(config_cls)):
        raise KeyError(f"model {name!r} must be a class whose Config (if any) is a dataclass")
    query_use = getattr(cls, "query_use", "ignored")
    if query_use not in ("ignored", "required", "optional"):
        raise KeyError(f"model {name!r}: query_use must be ignored, required or optional, got {query_use!r}")
    MODELS[name] = ModelSpec(cls, name, {"default": {}}, needs_text=bool(getattr(cls, "needs_text", False)),
                             query_use=query_use, reads_catalog=bool(getattr(cls, "reads_catalog", False)),
                             external=True, default_config=config_cls())
    return MODELS[name]


def expand(entries: list[str]) -> list[tuple[str, str]]:
    """Suite entries -> distinct (model, variant) pairs, in order ("karma" and "karma:karma" overlap);
    errors list the valid choices."""
    out = []
    for entry in entries:
        name, _, variant = entry.partition(":")
        model_spec(name)  # KeyError with the valid choices; registers an external model
        variants = MODELS[name].variants
        if variant and variant not in variants:
            raise KeyError(f"unknown variant {variant!r} of {name}; valid: {', '.join(variants)}")
        out += [(name, v) for v in ([variant] if variant else variants)]
    return list(dict.fromkeys(out))


def model_config(name: str, variant: str, model_configs, tuned: dict | None = None):
    """The typed config of one (model, variant): the suite's config node, then the variant's
    overrides, then the values a tuning search selected (``tuned``: field -> value)."""
    spec = model_spec(name)
    node = spec.default_config if spec.external else getattr(model_configs, spec.config)
    base = OmegaConf.to_object(node) if OmegaConf.is_config(node) else node
    return dataclasses.replace(base, **{**spec.variants[variant], **(tuned or {})})


def build(name: str, variant: str, log, model_configs, tuned: dict | None = None, cache_dir=None):
    """The model of one (model, variant) for the search log ``log``, ready to train."""
    spec, config = model_spec(name), model_config(name, variant, model_configs, tuned)
    return spec.cls(log, config, cache_dir) if spec.reads_catalog else spec.cls(log.n_items, config)
