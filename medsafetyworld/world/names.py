"""Made-up, pronounceable entity names (SPEC 1).

Every name is lowercase letters with at most one hyphen and no space, so that a word-level tokenizer
keeps each entity one token. Names are built from consonant-vowel syllables plus a suffix that
tells the kind apart (`zorvatil` a drug, `mexacine` a compound, `tarsic-flux` an effect,
`kelvar-syndrome` a condition, `ilsa-morrow` a patient). A denylist rejects real drugs, diseases
and common English words, so that no name carries meaning from outside the world.
"""

from __future__ import annotations

import re

import numpy as np

from medsafetyworld.errors import ConfigError

STYLES = ("drug", "compound", "effect", "condition", "patient")

_SIMPLE_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_CLUSTER_ONSETS = ("br", "dr", "kr", "tr", "pl", "st")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("l", "n", "r", "s", "m")
_NAME_ENDINGS = ("a", "o", "i")
_DRUG_SUFFIXES = ("til", "vex", "dol", "rane", "nium", "sil", "zex", "mol", "lane", "tium", "dex", "fil")
_COMPOUND_SUFFIXES = ("cine", "zine", "rate", "nate", "side", "tide", "mide", "vate", "zide", "thine")
_ADJECTIVE_SUFFIXES = ("sic", "tic", "ral", "nal", "zoid", "mic", "lar")
_EFFECT_NOUNS = (
    "flux", "drift", "surge", "shift", "tone", "pulse", "bloom", "ebb", "lag", "flare",
    "churn", "swell", "spur", "haze", "knot", "creep", "glow", "thrum",
)
_CONDITION_SUFFIXES = ("syndrome", "disease", "fever", "palsy", "pox", "malady", "blight")
_SURNAME_ENDINGS = ("", "", "n", "r", "s", "ton", "ley")

# Real drugs, diseases, eponyms and common words the syllable patterns can produce. The check is
# on the whole name and on each hyphen-separated part.
DENYLIST = frozenset("""
    aspirin tramadol atenolol sotalol nadolol labetalol propranolol codeine morphine cocaine
    lidocaine iodine saline insulin heparin warfarin valium xanax ritalin vitamin nicotine
    caffeine quinine atropine dopamine histamine serotonin adrenaline ketamine zolpidem
    ambien prozac zoloft lasix tylenol advil motrin aleve panadol dilantin digoxin lithium
    sodium calcium barium radium helium selenium titanium uranium premium medium tedium
    valine lysine leucine glycine alanine proline serine taurine tyrosine arginine
    fluoride chloride bromide nitrate sulfate phosphate carbonate iodide peroxide oxide
    malaria rubella cholera typhus tetanus rabies lupus measles mumps polio scurvy gout
    asthma anemia leprosy tinea dengue lyme zika ebola lassa marburg typhoid rickets
    down reye kawasaki marfan turner cushing addison crohn graves bell tourette rett
    noonan sjogren raynaud gilbert wilson paget hodgkin parkinson alzheimer huntington
    yellow scarlet rocky valley chicken monkey swine bird small great black
    mad tan bad sad man men ban van pan ran fan dan lad pad rat cat bat mat sat vat
    banana tomato potato canine feline bovine ravine marine divine define refine decline
    borate pirate karate debate senate sedate donate notate locate relate rebate negate
    mutate rotate dilate elate create granate
    decide reside beside inside preside subside collide divide provide
    dine fine line mine nine pine vine wine tine zine side tide wide ride hide bide
    minute minor motor manor tenor senor valor vapor tumor humor rumor lemur
    mole dole pole role sole tole vole hole bole kilo silo polo solo halo tiramisu
    denim venom tonic sonic ironic tunic panic manic runic relic topic comic
    lunar solar polar molar sonar tular
    rosin resin robin cabin satin latin basin tocsin toxin
    bolero tornado volcano piano soprano romano dorado
    silex tutor rotor vita dose test
    nova vega luna terra sola lava gala rota bola kola cola soda coma toga
    moral moron lemon melon salon talon baron felon canon
    sinus virus venus bonus onus torus minus
    mantis tennis pelvis penis sepsis mitosis
    tox zit
    taxi soda coma sofa lava tuba diva pita data beta zeta meta kilo solo polo memo demo veto
    limo hero zero menu guru mama papa nana tuna puma lama gala toga yoga saga mega vega nova
    kiwi mini sari safari salami tsunami origami bikini zucchini salsa pasta pizza mafia
    sonata camera banana potato tomato volcano domino casino piano bingo tango mango
    lotto motto ditto lasso bravo disco radio video studio rodeo patio
    rasta pasta vista fiesta siesta
    alma anna emma ella olga maria nina lola rosa dora nora vera mira lina tina gina
    timon simon demon lemon melon salmon mormon sermon
""".split())

_VALID = re.compile(r"^[a-z]+(-[a-z]+)*$")


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _syllable(rng: np.random.Generator, closed: bool = False) -> str:
    """`va`, `zor`, or `tra`: consonant clusters only where no coda can meet them."""
    if closed:
        return _pick(rng, _SIMPLE_ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS)
    onsets = _CLUSTER_ONSETS if rng.integers(4) == 0 else _SIMPLE_ONSETS
    return _pick(rng, onsets) + _pick(rng, _VOWELS)


def _stem(rng: np.random.Generator) -> str:
    """Two syllables, the first closed half of the time: `zorva`, `mexa`."""
    first = _syllable(rng, closed=bool(rng.integers(2)))
    return first + _pick(rng, _SIMPLE_ONSETS) + _pick(rng, _VOWELS)


def _candidate(rng: np.random.Generator, style: str) -> str:
    if style == "drug":
        return _stem(rng) + _pick(rng, _DRUG_SUFFIXES)
    if style == "compound":
        return _stem(rng) + _pick(rng, _COMPOUND_SUFFIXES)
    if style == "effect":
        return _syllable(rng, closed=True) + _pick(rng, _ADJECTIVE_SUFFIXES) + "-" + _pick(rng, _EFFECT_NOUNS)
    if style == "condition":
        word = _syllable(rng, closed=True) + _pick(rng, _SIMPLE_ONSETS) + _pick(rng, _VOWELS) + _pick(rng, _CODAS)
        return word + "-" + _pick(rng, _CONDITION_SUFFIXES)
    if style == "patient":
        first = _syllable(rng, closed=True) + _pick(rng, _SIMPLE_ONSETS) + _pick(rng, _NAME_ENDINGS)
        last = _syllable(rng, closed=True) + _pick(rng, _SIMPLE_ONSETS) + _pick(rng, _VOWELS)
        return first + "-" + last + _pick(rng, _SURNAME_ENDINGS)
    raise ConfigError(f"unknown name style {style!r}; choose one of {', '.join(STYLES)}")


def is_acceptable(name: str) -> bool:
    """Letters a-z and '-', at least 4 letters, and neither it nor a part of it a denied word."""
    if not _VALID.match(name) or sum(ch.isalpha() for ch in name) < 4:
        return False
    return name not in DENYLIST and not any(part in DENYLIST for part in name.split("-"))


def make_names(rng: np.random.Generator, n: int, taken: set[str], style: str) -> list[str]:
    """`n` fresh names of one style, none in `taken`; they are added to `taken` as they are made."""
    if style not in STYLES:
        raise ConfigError(f"unknown name style {style!r}; choose one of {', '.join(STYLES)}")
    out: list[str] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise ConfigError(f"cannot make {n} unique {style} names; lower the {style} count in the world config")
        name = _candidate(rng, style)
        if name in taken or not is_acceptable(name):
            continue
        taken.add(name)
        out.append(name)
    return out
