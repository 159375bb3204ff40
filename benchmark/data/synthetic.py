"""The embedded synthetic multimodal search log: no download, fully deterministic per config.

Public review data has no queries and no exposures, so the benchmark adapts them (HEM queries,
BM25 exposures; DESIGN.md §2). This loader instead *simulates* a search engine end to end, so the
log carries real queries and real exposed-but-unclicked items, and a rendered product image per
item. It is rich enough that semantics matter:

- items have a 3-level category path, brand, colour, material and style; the title and
  description are written from them, and the image is drawn from them (shape <- leaf category,
  fill <- colour, texture <- material, border/mark <- style);
- popularity is Zipf-like (a long tail), and ``new_item_share`` of the catalog is released only
  after every training event: new items occur (clicked or shown) only in each user's last
  ``new_item_window`` searches, so valid/test hold items no ID embedding has ever seen, and only
  their text and image can rank them;
- users have latent tastes (1-3 leaf categories, colours, materials, styles, a loyal brand); each
  search issues a query from the intended category path (sometimes with one attribute), the
  simulated engine shows ``n_exposures`` lexically matching items (relevance + popularity), and
  the user clicks the shown item of highest utility (query fit + taste + popularity + Gumbel noise).

Unlike the review loaders, ``raw_files`` is empty (nothing is read); the report's ``generated``
stat holds the resolved config instead. Only ``images/`` is written, under
``root/synthetic/<fingerprint>/``, and a file already there at the right size is not redrawn.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from benchmark.data.report import DataReport
from benchmark.data.schema import RAW_CATALOG_COLUMNS, RAW_INTERACTION_COLUMNS, RawLog
from benchmark.data.text import unique_terms

GENERATOR_VERSION = 1  # bump whenever the generative story changes: it enters the fingerprint


@dataclass
class SyntheticConfig:
    n_items: int = 1500  # catalog size (about 21 items per leaf category)
    n_users: int = 1200  # users; each yields one search per click
    min_events: int = 5  # fewest clicks per user (must exceed new_item_window)
    max_events: int = 20  # most clicks per user (inclusive)
    n_exposures: int = 20  # items shown per search: the click + n_exposures - 1 unclicked
    image_size: int = 64  # rendered PNG side, pixels
    seed: int = 0  # the DATA seed, independent of every model seed
    new_item_share: float = 0.10  # share of the catalog released after all training events
    new_item_window: int = 2  # a user's last searches that may show new items (= valid + test)
    zipf_alpha: float = 1.0  # popularity exponent: popularity of rank r is r ** -alpha
    query_attribute_prob: float = 0.35  # chance a query names one attribute ("red ceramic mugs")
    explore_prob: float = 0.15  # chance a search is outside the user's preferred leaves

    def __post_init__(self) -> None:
        if not 1 <= self.min_events <= self.max_events:
            raise ValueError(f"need 1 <= min_events <= max_events, got {self.min_events}, {self.max_events}")
        if self.min_events <= self.new_item_window:
            raise ValueError(f"min_events ({self.min_events}) must exceed new_item_window "
                             f"({self.new_item_window}) so every user has a training event")
        if not 0.0 <= self.new_item_share < 1.0:
            raise ValueError(f"new_item_share must lie in [0, 1), got {self.new_item_share}")
        if self.n_exposures < 1 or self.n_items < self.n_exposures + self.max_events:
            raise ValueError("n_items must exceed n_exposures + max_events, and n_exposures >= 1")
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {self.image_size}")
        if self.n_users < 1 or self.zipf_alpha < 0 or self.seed < 0:
            raise ValueError(f"synthetic.n_users must be >= 1, synthetic.zipf_alpha and synthetic.seed >= 0, got "
                             f"n_users={self.n_users}, zipf_alpha={self.zipf_alpha}, seed={self.seed}")
        for name in ("query_attribute_prob", "explore_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"synthetic.{name} must be in [0, 1], got {getattr(self, name)}")


# ---------------------------------------------------------------------------------------------
# The world: taxonomy and attribute vocabularies (fixed; the seed only draws from them).
# ---------------------------------------------------------------------------------------------
# top -> subcategory -> leaves (plural, as a shop's menu writes them). 6 x 4 x 3 = 72 leaves.
TAXONOMY: dict[str, dict[str, list[str]]] = {
    "Home": {"Kitchen": ["Mugs", "Teapots", "Cutting Boards"],
             "Bedding": ["Pillows", "Blankets", "Duvet Covers"],
             "Decor": ["Vases", "Candles", "Picture Frames"],
             "Lighting": ["Table Lamps", "Pendant Lights", "String Lights"]},
    "Clothing": {"Tops": ["T-Shirts", "Sweaters", "Blouses"],
                 "Bottoms": ["Jeans", "Skirts", "Shorts"],
                 "Outerwear": ["Jackets", "Raincoats", "Vests"],
                 "Accessories": ["Scarves", "Hats", "Belts"]},
    "Electronics": {"Audio": ["Headphones", "Speakers", "Earbuds"],
                    "Computing": ["Keyboards", "Mice", "Laptop Stands"],
                    "Phone Accessories": ["Phone Cases", "Chargers", "Cables"],
                    "Photography": ["Tripods", "Camera Bags", "Lens Caps"]},
    "Sports": {"Fitness": ["Yoga Mats", "Dumbbells", "Resistance Bands"],
               "Camping": ["Tents", "Backpacks", "Water Bottles"],
               "Cycling": ["Helmets", "Bike Lights", "Cycling Gloves"],
               "Team Sports": ["Footballs", "Basketballs", "Shin Guards"]},
    "Beauty": {"Skincare": ["Moisturizers", "Cleansers", "Serums"],
               "Haircare": ["Shampoos", "Hair Brushes", "Hair Clips"],
               "Makeup": ["Lipsticks", "Eyeshadow Palettes", "Makeup Brushes"],
               "Fragrance": ["Perfumes", "Body Mists", "Reed Diffusers"]},
    "Toys": {"Building": ["Building Blocks", "Jigsaw Puzzles", "Marble Runs"],
             "Plush": ["Teddy Bears", "Plush Animals", "Hand Puppets"],
             "Games": ["Board Games", "Card Games", "Dice Sets"],
             "Outdoor Play": ["Kites", "Bubble Wands", "Frisbees"]},
}
# The singular a title uses ("a ceramic mug"); default: drop a final "s" (or "es" after sh/ch).
_SINGULAR = {"Jeans": "jeans", "Shorts": "shorts", "Mice": "mouse", "Headphones": "headphones",
             "Earbuds": "earbuds", "Dice Sets": "dice set", "Scarves": "scarf", "T-Shirts": "t-shirt"}

# name -> RGB fill
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40), "orange": (240, 140, 30), "yellow": (240, 210, 50), "green": (60, 150, 60),
    "teal": (30, 140, 140), "blue": (50, 100, 210), "navy": (25, 35, 100), "purple": (120, 60, 160),
    "pink": (240, 140, 180), "brown": (120, 75, 40), "black": (25, 25, 25), "white": (250, 250, 250),
}
MATERIALS = ["ceramic", "wood", "glass", "steel", "cotton", "wool", "leather", "plastic", "bamboo", "linen"]
# Materials a subcategory plausibly uses (no ceramic jeans, no wooden pillows).
SUB_MATERIALS = {
    "Kitchen": ["ceramic", "wood", "glass", "steel", "bamboo"], "Bedding": ["cotton", "linen", "wool"],
    "Decor": ["ceramic", "glass", "wood", "steel"], "Lighting": ["glass", "steel", "bamboo", "ceramic"],
    "Tops": ["cotton", "wool", "linen"], "Bottoms": ["cotton", "linen", "wool"],
    "Outerwear": ["leather", "wool", "cotton", "linen"], "Accessories": ["wool", "leather", "cotton", "linen"],
    "Audio": ["plastic", "steel", "wood"], "Computing": ["plastic", "steel", "wood", "bamboo"],
    "Phone Accessories": ["plastic", "leather", "steel"], "Photography": ["steel", "leather", "plastic"],
    "Fitness": ["plastic", "steel", "cotton"], "Camping": ["plastic", "steel", "cotton"],
    "Cycling": ["plastic", "leather", "steel"], "Team Sports": ["leather", "plastic"],
    "Skincare": ["glass", "plastic", "ceramic"], "Haircare": ["plastic", "bamboo", "wood"],
    "Makeup": ["plastic", "bamboo", "glass"], "Fragrance": ["glass", "ceramic", "plastic"],
    "Building": ["wood", "plastic"], "Plush": ["cotton", "wool"],
    "Games": ["wood", "plastic"], "Outdoor Play": ["plastic", "wood", "cotton"],
}
STYLES = ["minimalist", "vintage", "modern", "rustic", "classic", "sporty", "luxury", "playful"]
BRANDS = [
    "Northwind", "Aurelia", "Kestrel", "Lumen & Co", "Birchwood", "Solstice", "Quillon", "Marlowe",
    "Tidewater", "Emberly", "Fjordline", "Calyx", "Hollis", "Verdant", "Osprey", "Juniper Lane",
    "Cobalt Works", "Maple Row", "Saffron", "Halcyon", "Ridgeway", "Pebble", "Arbor", "Nimbus",
    "Ironbark", "Wrenfield", "Sable", "Brightwater", "Thistle", "Corvid", "Larkspur", "Meridian",
    "Oakhaven", "Zephyr", "Granite Peak", "Willowmere", "Copperline", "Bramble", "Vantage", "Echo Bay",
]

# Description phrases: material and style cues the text carries (and the image shows).
_MATERIAL_PHRASE = {
    "ceramic": "smooth glazed ceramic", "wood": "solid wood with a hand-finished grain",
    "glass": "clear tempered glass", "steel": "brushed stainless steel", "cotton": "soft breathable cotton",
    "wool": "warm knitted wool", "leather": "full-grain leather", "plastic": "durable BPA-free plastic",
    "bamboo": "sustainable bamboo", "linen": "washed linen with a relaxed texture",
}
_STYLE_PHRASE = {
    "minimalist": "clean lines and no fuss", "vintage": "a retro look inspired by the seventies",
    "modern": "a sleek contemporary profile", "rustic": "a farmhouse, lived-in character",
    "classic": "a timeless design that never dates", "sporty": "an active, performance-ready build",
    "luxury": "premium details and gold accents", "playful": "bright, fun touches",
}
_TITLE_TEMPLATES = [
    "{brand} {style} {colour} {material} {leaf}",
    "{brand} {leaf} in {colour}, {material}",
    "{style} {material} {leaf} - {colour} | {brand}",
    "{colour} {leaf} by {brand}, {style} {material}",
]
_DESC_TEMPLATES = [
    "A {style} {leaf} from {brand}, made of {material_phrase} in a {colour} finish. "
    "Part of our {sub} range, with {style_phrase}.",
    "This {colour} {leaf} brings {style_phrase} to your {top_lower} collection. "
    "Crafted from {material_phrase}; designed by {brand}.",
    "{brand} presents a {colour} {material} {leaf} from its {sub_lower} line: "
    "{material_phrase}, with {style_phrase}.",
]

# Simulated engine and user: fixed weights of the generative story (documented in the card).
ENGINE_POP_WEIGHT = 0.8  # engine score = lexical overlap share + this * normalised log-popularity
ENGINE_NOISE = 0.10  # Gumbel scale of the engine's score (result lists vary between searches)
ENGINE_FRESH_BOOST = 0.25  # "new arrivals" boost for new items, inside the release window
W_LEAF_QUERY = 2.5  # utility: item is of the searched leaf
W_ATTR_QUERY = 1.2  # utility: item has the attribute the query names
W_LEAF_TASTE = 0.8  # utility: item's leaf is one of the user's preferred leaves
W_COLOUR, W_MATERIAL, W_STYLE = 0.9, 0.6, 0.6  # utility: matches the user's preferred attributes
W_BRAND = 0.9  # utility: the user's loyal brand (times the user's loyalty in [0, 1])
W_POP = 0.6  # utility: times log-popularity (-alpha * log rank): the long tail
EPOCH = 1_600_000_000  # first possible timestamp (2020-09-13), seconds
TRAIN_SPAN = 300 * 86400  # training searches happen in [EPOCH, EPOCH + TRAIN_SPAN)
WINDOW_SPAN = 60 * 86400  # the last new_item_window searches happen in the following 60 days
TICK = 3600  # timestamps are rounded to the hour, so users share ties


def _singular(leaf: str) -> str:
    if leaf in _SINGULAR:
        return _SINGULAR[leaf]
    low = leaf.lower()
    if low.endswith(("shes", "ches")):
        return low[:-2]
    return low[:-1] if low.endswith("s") else low


def fingerprint(config: SyntheticConfig) -> str:
    """12 hex digits naming this config's output folder (config + generator version)."""
    blob = json.dumps({"version": GENERATOR_VERSION, **asdict(config)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass
class SyntheticWorld:
    """Everything ``generate`` draws; ``load`` turns it into a RawLog and writes the images."""

    catalog: pd.DataFrame  # RAW_CATALOG_COLUMNS without the image path (``image`` is None)
    interactions: pd.DataFrame  # RAW_INTERACTION_COLUMNS + query, exposures
    is_new: np.ndarray  # (N,) bool: released after every training event
    leaf: np.ndarray  # (N,) int leaf index, into LEAVES
    colour: np.ndarray  # (N,) int index into COLOURS
    material: np.ndarray  # (N,) int index into MATERIALS
    style: np.ndarray  # (N,) int index into STYLES
    jitter: np.ndarray  # (N, 4) float in [-1, 1]: dx, dy, scale, pattern phase


# Flattened leaves: (top, sub, leaf) in taxonomy order.
LEAVES: list[tuple[str, str, str]] = [(t, s, leaf) for t, subs in TAXONOMY.items()
                                      for s, leaves in subs.items() for leaf in leaves]
_TOPS = list(TAXONOMY)
_COLOUR_NAMES = list(COLOURS)


def _brand_tops(rng: np.random.Generator) -> list[list[int]]:
    """Each top category's brands: every brand serves one or two tops (so brand carries meaning)."""
    per_top: list[list[int]] = [[] for _ in _TOPS]
    for b in range(len(BRANDS)):
        tops = rng.choice(len(_TOPS), size=1 + int(rng.random() < 0.35), replace=False)
        for t in tops:
            per_top[int(t)].append(b)
    for t, brands in enumerate(per_top):  # guarantee at least three brands per top
        while len(brands) < 3:
            b = int(rng.integers(len(BRANDS)))
            if b not in brands:
                brands.append(b)
        per_top[t] = sorted(brands)
    return per_top


def _make_catalog(config: SyntheticConfig, rng: np.random.Generator):
    n = config.n_items
    leaf_weights = rng.dirichlet(np.full(len(LEAVES), 4.0))  # uneven but no empty leaves
    # Every leaf once (when n allows), the rest drawn by the uneven leaf weights.
    leaf = np.concatenate([np.arange(len(LEAVES)),
                           rng.choice(len(LEAVES), size=max(n - len(LEAVES), 0), p=leaf_weights)])[:n]
    leaf = rng.permutation(leaf)
    top = np.array([_TOPS.index(LEAVES[k][0]) for k in leaf])
    brands_of_top = _brand_tops(rng)
    brand = np.array([rng.choice(brands_of_top[t]) for t in top])
    colour = rng.integers(len(COLOURS), size=n)
    material = np.array([MATERIALS.index(rng.choice(SUB_MATERIALS[LEAVES[k][1]])) for k in leaf])
    style = rng.integers(len(STYLES), size=n)
    title_tpl = rng.integers(len(_TITLE_TEMPLATES), size=n)
    desc_tpl = rng.integers(len(_DESC_TEMPLATES), size=n)
    jitter = rng.uniform(-1.0, 1.0, size=(n, 4))

    rows = []
    for i in range(n):
        t, s, lf = LEAVES[leaf[i]]
        fields = {"brand": BRANDS[brand[i]], "style": STYLES[style[i]], "colour": _COLOUR_NAMES[colour[i]],
                  "material": MATERIALS[material[i]], "leaf": _singular(lf), "sub": s,
                  "sub_lower": s.lower(), "top_lower": t.lower(),
                  "material_phrase": _MATERIAL_PHRASE[MATERIALS[material[i]]],
                  "style_phrase": _STYLE_PHRASE[STYLES[style[i]]]}
        title = _TITLE_TEMPLATES[title_tpl[i]].format(**fields)
        title = title[0].upper() + title[1:]
        desc = _DESC_TEMPLATES[desc_tpl[i]].format(**fields)
        rows.append({"item_id": f"syn{i:05d}", "title": title, "brand": BRANDS[brand[i]],
                     "category": [t, s, lf], "description": desc, "image": None})
    catalog = pd.DataFrame(rows, columns=RAW_CATALOG_COLUMNS)
    return catalog, leaf, brand, colour, material, style, jitter


def _inverted_index(catalog: pd.DataFrame) -> dict[str, np.ndarray]:
    """term -> item indices whose title + brand + category path + description contains it."""
    postings: dict[str, list[int]] = {}
    for i, (title, brand, cat, desc) in enumerate(zip(catalog["title"], catalog["brand"],
                                                      catalog["category"], catalog["description"], strict=True)):
        for term in unique_terms(" ".join([title, brand, " ".join(cat), desc])):
            postings.setdefault(term, []).append(i)
    return {t: np.asarray(v, dtype=np.int64) for t, v in postings.items()}


def generate(config: SyntheticConfig) -> SyntheticWorld:
    """Draw the catalog and the search log (no files written). Deterministic per config."""
    rng = np.random.default_rng(config.seed)
    catalog, leaf, brand, colour, material, style, jitter = _make_catalog(config, rng)
    n = config.n_items
    leaf_top = np.array([_TOPS.index(t) for t, _, _ in LEAVES])
    leaf_sub = np.array([_TOPS.index(t) * 4 + list(TAXONOMY[t]).index(s) for t, s, _ in LEAVES])
    top, sub = leaf_top[leaf], leaf_sub[leaf]  # (N,) each

    # Zipf-like popularity over a random ranking of the items: a long tail.
    rank = rng.permutation(n) + 1
    log_pop = -config.zipf_alpha * np.log(rank)
    pop_norm = (log_pop - log_pop.min()) / max(np.ptp(log_pop), 1e-9)  # in [0, 1], 1 = most popular
    n_new = int(round(config.new_item_share * n))
    is_new = np.zeros(n, dtype=bool)
    is_new[rng.choice(n, size=n_new, replace=False)] = True

    postings = _inverted_index(catalog)
    leaf_pop = np.bincount(leaf, weights=np.exp(log_pop), minlength=len(LEAVES))
    leaf_pop = leaf_pop / leaf_pop.sum()  # exploration searches favour popular leaves

    user_rows = []
    for u in range(config.n_users):
        # Latent taste.
        n_pref = int(rng.integers(1, 4))
        pref_leaves = rng.choice(len(LEAVES), size=n_pref, replace=False, p=leaf_pop * 0.5 + 0.5 / len(LEAVES))
        pref_colours = rng.choice(len(COLOURS), size=int(rng.integers(1, 3)), replace=False)
        pref_materials = rng.choice(len(MATERIALS), size=int(rng.integers(1, 3)), replace=False)
        pref_styles = rng.choice(len(STYLES), size=int(rng.integers(1, 3)), replace=False)
        loyal_brand = int(rng.choice(np.unique(brand[top == leaf_top[pref_leaves[0]]])))
        loyalty = float(rng.beta(2, 2))
        taste = (W_LEAF_TASTE * np.isin(leaf, pref_leaves) + W_COLOUR * np.isin(colour, pref_colours)
                 + W_MATERIAL * np.isin(material, pref_materials) + W_STYLE * np.isin(style, pref_styles)
                 + W_BRAND * loyalty * (brand == loyal_brand) + W_POP * log_pop)  # (N,)

        n_events = int(rng.integers(config.min_events, config.max_events + 1))
        n_train = n_events - config.new_item_window
        start = rng.uniform(0, TRAIN_SPAN * 0.5)
        times = np.concatenate([np.sort(rng.uniform(start, TRAIN_SPAN, size=n_train)),
                                np.sort(rng.uniform(TRAIN_SPAN, TRAIN_SPAN + WINDOW_SPAN,
                                                    size=config.new_item_window))])
        times = EPOCH + (times // TICK).astype(np.int64) * TICK
        clicked = np.zeros(n, dtype=bool)
        for e in range(n_events):
            in_window = e >= n_train
            # The query: the intended leaf's path terms, sometimes with one preferred attribute.
            target_leaf = int(rng.choice(len(LEAVES), p=leaf_pop)) if rng.random() < config.explore_prob \
                else int(rng.choice(pref_leaves))
            t, s, lf = LEAVES[target_leaf]
            depth = rng.choice(3, p=[0.45, 0.35, 0.20])  # leaf / sub + leaf / full path
            words = [[lf], [s, lf], [t, s, lf]][depth]
            attr_mask = np.zeros(n, dtype=bool)  # items having the attribute the query names
            if rng.random() < config.query_attribute_prob:
                kind = int(rng.integers(3))
                if kind == 1 and MATERIALS[pref_materials[0]] in SUB_MATERIALS[s]:
                    attr, attr_mask = MATERIALS[pref_materials[0]], material == pref_materials[0]
                elif kind == 2:
                    attr, attr_mask = STYLES[pref_styles[0]], style == pref_styles[0]
                else:
                    attr, attr_mask = _COLOUR_NAMES[pref_colours[0]], colour == pref_colours[0]
                words = [attr] + words
            query = " ".join(unique_terms(" ".join(words)))
            q_terms = query.split()

            # The engine: lexical overlap share + popularity + noise, over eligible matches.
            hits = np.concatenate([postings.get(term, np.empty(0, dtype=np.int64)) for term in q_terms])
            cand, count = np.unique(hits, return_counts=True)  # items matching >= 1 query term
            keep = ~clicked[cand] & (in_window | ~is_new[cand])
            cand, count = cand[keep], count[keep]
            if len(cand) < config.n_exposures:  # too few matches: back-fill with every eligible item
                cand = np.flatnonzero(~clicked & (in_window | ~is_new))
                count = np.isin(cand, hits).astype(np.float64)
            score = count / len(q_terms) + ENGINE_POP_WEIGHT * pop_norm[cand] \
                + ENGINE_NOISE * rng.gumbel(size=len(cand))
            if in_window:
                score = score + ENGINE_FRESH_BOOST * is_new[cand]
            top_k = np.argpartition(-score, config.n_exposures - 1)[:config.n_exposures]
            shown = cand[top_k[np.argsort(-score[top_k], kind="stable")]]  # the result page, best first

            # The user clicks the shown item of highest utility.
            utility = (taste[shown] + W_LEAF_QUERY * (leaf[shown] == target_leaf)
                       + 0.5 * W_LEAF_QUERY * (sub[shown] == leaf_sub[target_leaf])
                       + W_ATTR_QUERY * attr_mask[shown]
                       + rng.gumbel(size=len(shown)))
            click = int(shown[int(np.argmax(utility))])
            clicked[click] = True
            user_rows.append((f"u{u:05d}", f"syn{click:05d}", int(times[e]), e, query, [t, s, lf],
                              [f"syn{j:05d}" for j in shown if j != click]))

    # query_path: the searched category path (the query modes of benchmark.data.adapt cut it)
    inter = pd.DataFrame(user_rows, columns=["user_id", "item_id", "timestamp", "seq", "query", "query_path",
                                             "exposures"])
    inter = inter.sort_values(["timestamp", "user_id", "seq"], kind="stable").reset_index(drop=True)
    inter["order"] = np.arange(len(inter), dtype=np.int64)
    inter = inter[RAW_INTERACTION_COLUMNS + ["query", "query_path", "exposures"]]
    return SyntheticWorld(catalog, inter, is_new, leaf, colour, material, style, jitter)


# ---------------------------------------------------------------------------------------------
# Images: shape <- leaf, fill <- colour, texture <- material, border/mark <- style.
# ---------------------------------------------------------------------------------------------
_SHAPES = ["ellipse", "rect", "rounded", "triangle", "mug", "bottle", "diamond", "hexagon",
           "ring", "tshirt", "trapezoid", "star"]


def _shape_polygon(kind: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if kind == "triangle":
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if kind == "hexagon":
        return [(cx + w / 2 * np.cos(a), cy + h / 2 * np.sin(a)) for a in np.arange(6) * np.pi / 3]
    if kind == "trapezoid":
        return [(x0 + w * 0.25, y0), (x1 - w * 0.25, y0), (x1, y1), (x0, y1)]
    if kind == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.22
            a = -np.pi / 2 + k * np.pi / 5
            pts.append((cx + w * r * np.cos(a), cy + h * r * np.sin(a)))
        return pts
    if kind == "tshirt":
        return [(x0 + w * .3, y0), (x1 - w * .3, y0), (x1, y0 + h * .25), (x1 - w * .15, y0 + h * .38),
                (x1 - w * .22, y0 + h * .3), (x1 - w * .22, y1), (x0 + w * .22, y1), (x0 + w * .22, y0 + h * .3),
                (x0 + w * .15, y0 + h * .38), (x0, y0 + h * .25)]
    return None


def _draw_mask(kind: str, box, size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    d = ImageDraw.Draw(mask)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    poly = _shape_polygon(kind, box)
    if poly is not None:
        d.polygon(poly, fill=255)
    elif kind == "ellipse":
        d.ellipse(box, fill=255)
    elif kind == "rect":
        d.rectangle(box, fill=255)
    elif kind == "rounded":
        d.rounded_rectangle(box, radius=max(2, int(min(w, h) * 0.25)), fill=255)
    elif kind == "mug":
        d.rounded_rectangle((x0, y0, x1 - w * 0.25, y1), radius=max(1, int(w * 0.08)), fill=255)
        d.ellipse((x1 - w * 0.4, y0 + h * 0.2, x1, y0 + h * 0.7), outline=255, width=max(2, size // 16))
    elif kind == "bottle":
        d.rounded_rectangle((x0 + w * 0.15, y0 + h * 0.3, x1 - w * 0.15, y1), radius=max(1, int(w * 0.15)), fill=255)
        d.rectangle((x0 + w * 0.38, y0, x1 - w * 0.38, y0 + h * 0.35), fill=255)
    elif kind == "ring":
        d.ellipse(box, fill=255)
        d.ellipse((x0 + w * 0.3, y0 + h * 0.3, x1 - w * 0.3, y1 - h * 0.3), fill=0)
    return mask


def _texture(material: str, rgb: tuple[int, int, int], size: int, phase: float) -> np.ndarray:
    """(S, S, 3) uint8 fill: the colour modulated by the material's pattern."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    base = np.asarray(rgb, dtype=np.float32)
    p = phase * np.pi
    if material == "wood":  # wavy horizontal grain
        m = 0.8 + 0.2 * np.sin(40 * yy + 3 * np.sin(8 * xx + p))
    elif material == "steel":  # vertical brushed streaks + sheen
        m = 0.85 + 0.1 * np.sin(90 * xx + p) + 0.15 * (1 - yy)
    elif material == "glass":  # light, with a diagonal highlight
        m = 1.0 + 0.5 * (np.abs(xx - yy - 0.1 * phase) < 0.08)
        base = base * 0.6 + 255 * 0.4
    elif material == "ceramic":  # glossy radial highlight
        m = 1.0 + 0.45 * np.exp(-((xx - 0.35) ** 2 + (yy - 0.3) ** 2) / 0.02)
    elif material == "cotton":  # fine dots
        m = 0.85 + 0.15 * ((np.floor(xx * size / 3) + np.floor(yy * size / 3)) % 2)
    elif material == "wool":  # cross-hatch knit
        m = 0.8 + 0.2 * ((np.sin(30 * (xx + yy) + p) > 0) ^ (np.sin(30 * (xx - yy)) > 0))
    elif material == "leather":  # deterministic grain
        m = 0.85 + 0.08 * np.sin(70 * xx + 13 * np.sin(50 * yy)) * np.sin(60 * yy + 11 * np.sin(45 * xx) + p)
    elif material == "bamboo":  # vertical stripes with nodes
        m = 0.8 + 0.15 * (np.sin(25 * xx + p) > 0) - 0.25 * (np.abs(((yy * 3 + 0.2 * phase) % 1) - 0.5) < 0.04)
    elif material == "linen":  # slub weave: fine horizontal + vertical lines
        m = 0.88 + 0.06 * np.sin(size * 1.6 * xx) + 0.06 * np.sin(size * 1.6 * yy + p)
    else:  # plastic: flat with a soft shadow
        m = 1.0 - 0.2 * yy
    out = base[None, None, :] * m[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def render_image(item: int, world: SyntheticWorld, size: int) -> Image.Image:
    """Draw item ``item`` of ``world`` as a (size x size) RGB product shot."""
    leaf_idx = int(world.leaf[item])
    kind = _SHAPES[leaf_idx % len(_SHAPES)]
    aspect = [1.0, 0.7, 1.35, 0.85, 1.2, 0.6][(leaf_idx // len(_SHAPES)) % 6]  # width / height
    dx, dy, ds, phase = world.jitter[item]
    extent = size * (0.62 + 0.06 * ds)
    w, h = (extent, extent / aspect) if aspect >= 1 else (extent * aspect, extent)
    cx, cy = size / 2 + dx * size * 0.05, size / 2 + dy * size * 0.05
    box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    colour = _COLOUR_NAMES[int(world.colour[item])]
    material = MATERIALS[int(world.material[item])]
    style = STYLES[int(world.style[item])]

    bg = (236, 236, 240) if colour != "white" else (200, 205, 215)  # white products on grey
    img = Image.new("RGB", (size, size), bg)
    fill = Image.fromarray(_texture(material, COLOURS[colour], size, float(phase)), "RGB")
    img.paste(fill, (0, 0), _draw_mask(kind, box, size))
    d = ImageDraw.Draw(img)
    s = size
    u = max(1, s // 32)  # line unit
    if style == "vintage":  # sepia frame
        d.rectangle((0, 0, s - 1, s - 1), outline=(150, 110, 60), width=3 * u)
    elif style == "modern":  # thin black frame
        d.rectangle((0, 0, s - 1, s - 1), outline=(0, 0, 0), width=u)
    elif style == "rustic":  # thick brown frame
        d.rectangle((0, 0, s - 1, s - 1), outline=(95, 60, 30), width=5 * u)
    elif style == "classic":  # double navy frame
        d.rectangle((0, 0, s - 1, s - 1), outline=(30, 40, 90), width=u)
        d.rectangle((3 * u, 3 * u, s - 1 - 3 * u, s - 1 - 3 * u), outline=(30, 40, 90), width=u)
    elif style == "sporty":  # diagonal stripe in the corner
        d.line((0, s * 0.3, s * 0.3, 0), fill=(230, 60, 30), width=3 * u)
        d.line((0, s * 0.42, s * 0.42, 0), fill=(230, 60, 30), width=u)
    elif style == "luxury":  # gold corner dots
        r = 3 * u
        for x, y in ((r + u, r + u), (s - r - u, r + u), (r + u, s - r - u), (s - r - u, s - r - u)):
            d.ellipse((x - r, y - r, x + r, y + r), fill=(212, 175, 55))
    elif style == "playful":  # a small confetti mark top-right
        for k, c in enumerate([(240, 60, 120), (60, 180, 240), (250, 200, 40)]):
            x = s - 8 * u + k * 2 * u
            d.ellipse((x, 2 * u + k * u, x + 2 * u, 4 * u + k * u), fill=c)
    # minimalist: nothing
    return img


def _write_png(img: Image.Image, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    img.save(tmp, format="PNG")
    os.replace(tmp, path)


def _has_image(path: Path, size: int) -> bool:
    if not path.exists():
        return False
    try:
        with Image.open(path) as im:
            return im.format == "PNG" and im.size == (size, size)
    except OSError:
        return False


def FILES(category: str) -> list:  # noqa: N802 (the loader protocol's name)
    """Nothing to download: the log is generated."""
    return []


def load(root: Path, config: SyntheticConfig, report: DataReport) -> RawLog:
    """Generate the synthetic search log and render its images under ``root/synthetic/<fp>/images``."""
    world = generate(config)
    image_dir = Path(root) / "synthetic" / fingerprint(config) / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, item_id in enumerate(world.catalog["item_id"]):
        path = image_dir / f"{item_id}.png"
        if not _has_image(path, config.image_size):
            _write_png(render_image(i, world, config.image_size), path)
        paths.append(str(path))
    catalog = world.catalog.copy()
    catalog["image"] = paths

    inter = world.interactions
    clicks = inter["item_id"].value_counts()
    top_k = max(1, int(round(0.1 * config.n_items)))
    report.stat("generated", f"synthetic v{GENERATOR_VERSION} " + json.dumps(asdict(config), sort_keys=True))
    report.stat("items", int(len(catalog)))
    report.stat("users", int(inter["user_id"].nunique()))
    report.stat("interactions", int(len(inter)))
    report.stat("new_items", int(world.is_new.sum()))
    report.stat("new_item_share", float(world.is_new.mean()))
    report.stat("items_clicked", int(len(clicks)))
    report.stat("top10pct_click_share", float(clicks.sort_values(ascending=False).iloc[:top_k].sum() / len(inter)))
    new_ids = set(catalog["item_id"][world.is_new])
    report.stat("new_item_click_share", float(inter["item_id"].isin(new_ids).mean()))
    return RawLog(name="synthetic", catalog=catalog, interactions=inter, has_text=True,
                  has_timestamps=True, raw_files={}, report=report, skip_k_core=True)
