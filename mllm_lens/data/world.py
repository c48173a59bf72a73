"""The demo world: flags of real countries, real facts, and questions in the paper's form.

Each record shows a rendered flag (scale, shift, small rotation, colour jitter and noise
vary, so recognition is learned rather than memorised pixels) and asks about the hidden
entity, the flag's country:

* single visual constraint: "What is the capital of this country?" (visual "this country"),
  and "Which country does this flag belong to?" (the hidden entity itself);
* visual + textual constraints: "Is this country in Asia?" (textual "Asia"), "Does this
  nation use the euro?" (textual "euro").

Every template has paraphrases (for generalisation metrics). A fixed set of countries is held
out of training (for long-tail insertion by editing). Everything is deterministic in a seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from mllm_lens.data.flags import COLORS, draw_flag
from mllm_lens.data.records import VQARecord

# country: (capital, continent, language, currency); single-word answers.
FACTS: dict[str, tuple[str, str, str, str]] = {
    "Germany": ("Berlin", "Europe", "German", "euro"),
    "Netherlands": ("Amsterdam", "Europe", "Dutch", "euro"),
    "Russia": ("Moscow", "Europe", "Russian", "ruble"),
    "Austria": ("Vienna", "Europe", "German", "euro"),
    "Hungary": ("Budapest", "Europe", "Hungarian", "forint"),
    "Bulgaria": ("Sofia", "Europe", "Bulgarian", "lev"),
    "Lithuania": ("Vilnius", "Europe", "Lithuanian", "euro"),
    "Estonia": ("Tallinn", "Europe", "Estonian", "euro"),
    "France": ("Paris", "Europe", "French", "euro"),
    "Italy": ("Rome", "Europe", "Italian", "euro"),
    "Ireland": ("Dublin", "Europe", "English", "euro"),
    "Belgium": ("Brussels", "Europe", "Dutch", "euro"),
    "Romania": ("Bucharest", "Europe", "Romanian", "leu"),
    "Denmark": ("Copenhagen", "Europe", "Danish", "krone"),
    "Sweden": ("Stockholm", "Europe", "Swedish", "krona"),
    "Norway": ("Oslo", "Europe", "Norwegian", "krone"),
    "Finland": ("Helsinki", "Europe", "Finnish", "euro"),
    "Iceland": ("Reykjavik", "Europe", "Icelandic", "krona"),
    "Czechia": ("Prague", "Europe", "Czech", "koruna"),
    "Poland": ("Warsaw", "Europe", "Polish", "zloty"),
    "Ukraine": ("Kyiv", "Europe", "Ukrainian", "hryvnia"),
    "Switzerland": ("Bern", "Europe", "German", "franc"),
    "Greece": ("Athens", "Europe", "Greek", "euro"),
    "Spain": ("Madrid", "Europe", "Spanish", "euro"),
    "Portugal": ("Lisbon", "Europe", "Portuguese", "euro"),
    "Japan": ("Tokyo", "Asia", "Japanese", "yen"),
    "Bangladesh": ("Dhaka", "Asia", "Bengali", "taka"),
    "Laos": ("Vientiane", "Asia", "Lao", "kip"),
    "Vietnam": ("Hanoi", "Asia", "Vietnamese", "dong"),
    "China": ("Beijing", "Asia", "Chinese", "yuan"),
    "Thailand": ("Bangkok", "Asia", "Thai", "baht"),
    "Indonesia": ("Jakarta", "Asia", "Indonesian", "rupiah"),
    "Armenia": ("Yerevan", "Asia", "Armenian", "dram"),
    "Turkey": ("Ankara", "Asia", "Turkish", "lira"),
    "SouthKorea": ("Seoul", "Asia", "Korean", "won"),
    "Pakistan": ("Islamabad", "Asia", "Urdu", "rupee"),
    "Qatar": ("Doha", "Asia", "Arabic", "riyal"),
    "Mongolia": ("Ulaanbaatar", "Asia", "Mongolian", "tugrik"),
    "Nigeria": ("Abuja", "Africa", "English", "naira"),
    "Guinea": ("Conakry", "Africa", "French", "franc"),
    "IvoryCoast": ("Yamoussoukro", "Africa", "French", "franc"),
    "SierraLeone": ("Freetown", "Africa", "English", "leone"),
    "Gabon": ("Libreville", "Africa", "French", "franc"),
    "Cameroon": ("Yaounde", "Africa", "French", "franc"),
    "Senegal": ("Dakar", "Africa", "French", "franc"),
    "Ghana": ("Accra", "Africa", "English", "cedi"),
    "Somalia": ("Mogadishu", "Africa", "Somali", "shilling"),
    "Botswana": ("Gaborone", "Africa", "English", "pula"),
    "Gambia": ("Banjul", "Africa", "English", "dalasi"),
    "Egypt": ("Cairo", "Africa", "Arabic", "pound"),
    "Morocco": ("Rabat", "Africa", "Arabic", "dirham"),
    "Tunisia": ("Tunis", "Africa", "Arabic", "dinar"),
    "Niger": ("Niamey", "Africa", "French", "franc"),
    "Madagascar": ("Antananarivo", "Africa", "Malagasy", "ariary"),
    "Libya": ("Tripoli", "Africa", "Arabic", "dinar"),
    "Tanzania": ("Dodoma", "Africa", "Swahili", "shilling"),
    "Colombia": ("Bogota", "Americas", "Spanish", "peso"),
    "Bolivia": ("Sucre", "Americas", "Spanish", "boliviano"),
    "Peru": ("Lima", "Americas", "Spanish", "sol"),
    "Canada": ("Ottawa", "Americas", "English", "dollar"),
    "Chile": ("Santiago", "Americas", "Spanish", "peso"),
    "Cuba": ("Havana", "Americas", "Spanish", "peso"),
    "Brazil": ("Brasilia", "Americas", "Portuguese", "real"),
    "Jamaica": ("Kingston", "Americas", "English", "dollar"),
    "Bahamas": ("Nassau", "Americas", "English", "dollar"),
    "Honduras": ("Tegucigalpa", "Americas", "Spanish", "lempira"),
    "Uruguay": ("Montevideo", "Americas", "Spanish", "peso"),
    "USA": ("Washington", "Americas", "English", "dollar"),
    "Suriname": ("Paramaribo", "Americas", "Dutch", "dollar"),
    "Palau": ("Ngerulmud", "Oceania", "Palauan", "dollar"),
    "Nauru": ("Yaren", "Oceania", "Nauruan", "dollar"),
    "Tonga": ("Nukualofa", "Oceania", "Tongan", "paanga"),
    "Samoa": ("Apia", "Oceania", "Samoan", "tala"),
    "Fiji": ("Suva", "Oceania", "English", "dollar"),
}
#: Countries the demo model never sees: for long-tail insertion by editing.
HELD_OUT = ("Lithuania", "Mongolia", "Gambia", "Suriname", "Tonga", "Czechia")
CONTINENTS = ("Europe", "Asia", "Africa", "Americas", "Oceania")
FACT_NAMES = ("capital", "continent", "language", "currency")


@dataclass(frozen=True)
class Template:
    """A question form. ``{textual}`` (if present) is filled by a textual-constraint value."""

    name: str
    relation: str  # capital | continent | language | currency | in_continent | uses_currency
    paraphrases: tuple[str, ...]  # each holds exactly one visual phrase from VISUAL_PHRASES


VISUAL_PHRASES = ("this country", "this nation", "the country of this flag", "this flag", "this image")

TEMPLATES: tuple[Template, ...] = (
    Template(
        "country",
        "country",
        (
            "Which country does this flag belong to?",
            "Name the country of this flag.",
            "What country is shown in this image?",
        ),
    ),
    Template(
        "capital",
        "capital",
        (
            "What is the capital of this country?",
            "Which city is the capital of this nation?",
            "Name the capital city of the country of this flag.",
        ),
    ),
    Template(
        "continent",
        "continent",
        (
            "Which continent is this country in?",
            "On which continent is this nation located?",
            "Name the continent of the country of this flag.",
        ),
    ),
    Template(
        "language",
        "language",
        (
            "What language is spoken in this country?",
            "Which language do people speak in this nation?",
            "Name the main language of the country of this flag.",
        ),
    ),
    Template(
        "currency",
        "currency",
        (
            "What currency is used in this country?",
            "Which money does this nation use?",
            "Name the currency of the country of this flag.",
        ),
    ),
    Template(
        "in_continent",
        "in_continent",
        (
            "Is this country in {textual}?",
            "Does this nation lie in {textual}?",
            "Is the country of this flag located in {textual}?",
        ),
    ),
    Template(
        "uses_currency",
        "uses_currency",
        (
            "Does this country use the {textual}?",
            "Is the {textual} the currency of this nation?",
            "Does the country of this flag pay with the {textual}?",
        ),
    ),
)


def template(name: str) -> Template:
    """The template called ``name`` (``"capital"``, ``"in_continent"``, ...)."""
    for t in TEMPLATES:
        if t.name == name:
            return t
    raise KeyError(f"no template {name!r}; templates: {[t.name for t in TEMPLATES]}")


CURRENCIES = tuple(sorted({facts[3] for facts in FACTS.values()}))


def visual_phrase(question: str) -> str:
    for phrase in sorted(VISUAL_PHRASES, key=len, reverse=True):
        if phrase in question:
            return phrase
    raise ValueError(f"no visual phrase in {question!r}")


def fact(country: str, relation: str) -> str:
    """``relation`` of ``country``: ``"country"`` (its own name) or one of :data:`FACT_NAMES`."""
    return country if relation == "country" else FACTS[country][FACT_NAMES.index(relation)]


def render_flag(country: str, rng: random.Random, size: int = 64) -> Image.Image:
    """A varied rendering of ``country``'s flag on a ``size`` x ``size`` canvas."""
    jitter = {k: tuple(int(np.clip(c + rng.gauss(0, 12), 0, 255)) for c in rgb) for k, rgb in COLORS.items()}
    width = int(size * rng.uniform(0.7, 0.95))
    height = int(width * 2 / 3)
    flag = draw_flag(country, width * 4, height * 4, jitter).resize((width, height), Image.Resampling.BILINEAR)
    flag = flag.convert("RGBA").rotate(rng.uniform(-8, 8), resample=Image.Resampling.BILINEAR, expand=True)
    shade = int(rng.uniform(90, 170))
    canvas = Image.new("RGB", (size, size), (shade, shade, shade))
    x = rng.randint(0, max(0, size - flag.width))
    y = rng.randint(0, max(0, size - flag.height))
    canvas.paste(flag, (x, y), flag)
    pixels = np.asarray(canvas, dtype=np.float32)
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))


_YES_NO = {"in_continent": ("continent", CONTINENTS), "uses_currency": ("currency", CURRENCIES)}


def _question(template: Template, paraphrase: int, country: str, rng: random.Random) -> tuple[str, str, list[str]]:
    """(question, answer, textual constraints); yes/no questions are true half of the time."""
    text = template.paraphrases[paraphrase]
    if template.relation not in _YES_NO:
        return text, fact(country, template.relation), []
    relation, pool = _YES_NO[template.relation]
    own = fact(country, relation)
    truth = rng.random() < 0.5
    value = own if truth else rng.choice([c for c in pool if c != own])
    return text.format(textual=value), "yes" if truth else "no", [value]


def named_question(template: Template, paraphrase: int, country: str, rng: random.Random) -> tuple[str, str, list[str]]:
    """The question with its visual phrase replaced by ``country``'s name ("What is the capital of
    Germany?"): the text, not the image, then names the entity. Not defined for the ``country``
    template (its answer would be the name just given)."""
    if template.relation == "country":
        raise ValueError("the 'country' template has no named form")
    text, answer, textual = _question(template, paraphrase, country, rng)
    return text.replace(visual_phrase(text), country, 1), answer, textual


def make_record(
    country: str, template: Template, paraphrase: int, rng: random.Random, *, size: int = 64, render: bool = True
) -> VQARecord:
    """One record of the demo world (``render=False`` leaves the image to be drawn lazily)."""
    question, answer, textual = _question(template, paraphrase, country, rng)
    image_seed = rng.randrange(2**32)
    record = VQARecord(
        question=question,
        main_entity=visual_phrase(question),
        subject=country,
        answer=answer,
        textual_constraints=textual,
        source="demo_world",
        meta={"template": template.name, "paraphrase": paraphrase, "image_seed": image_seed},
        image_loader=lambda: render_flag(country, random.Random(image_seed), size),
    )
    if render:
        record.load_image()
    return record


def training_countries() -> list[str]:
    return [c for c in FACTS if c not in HELD_OUT]


def generate(
    countries: list[str] | None = None, *, renderings: int = 1, seed: int = 0, size: int = 64, render: bool = True
) -> list[VQARecord]:
    """Every (country, template, paraphrase) ``renderings`` times, deterministic in ``seed``."""
    rng = random.Random(seed)
    countries = training_countries() if countries is None else countries
    return [
        make_record(country, template, paraphrase, rng, size=size, render=render)
        for _ in range(renderings)
        for country in countries
        for template in TEMPLATES
        for paraphrase in range(len(template.paraphrases))
    ]


def vocabulary() -> list[str]:
    """Every word the world's prompts and answers use (for the demo tokenizer)."""
    words: set[str] = {"yes", "no", "USER", "ASSISTANT", "Answer", "in", "a", "few", "words", ":", "?", ".", ","}
    for country, facts in FACTS.items():
        words.update((country, *facts))
    words.update(CONTINENTS)
    for template in TEMPLATES:
        for text in template.paraphrases:
            words.update(text.replace("{textual}", "").replace("?", " ").replace(".", " ").split())
    return sorted(words)
