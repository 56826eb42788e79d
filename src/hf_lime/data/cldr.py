"""Parallel facts generated from the Unicode CLDR through `babel` (CLDR and babel: BSD-3 / Unicode licence).

Three relations, subject = a CLDR territory (country or dependent territory, ISO 3166 code):

- ``capital``: country -> capital city. Only countries of a hand-checked table (`CAPITAL_TIME_ZONES`)
  whose capital is the exemplar city of one of their IANA time zones (``FR`` -> ``Europe/Paris``); the
  localised city name is CLDR's exemplar city. ``target_id`` is the time-zone id.
- ``official_language``: country -> its official language (``babel.languages.get_official_languages``,
  de jure and de facto); countries with several official languages are dropped as ambiguous.
  ``target_id`` is the language code.
- ``currency``: country -> the currency that is legal tender on `CURRENCY_DATE`
  (``babel.numbers.get_territory_currencies``); countries with several are dropped. ``target_id`` is the
  ISO 4217 code.

A fact is kept only when its subject and object have a CLDR name in every requested language. The
templates are ours (`TEMPLATES`); pass `templates=` to add languages or replace wordings.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping, Sequence

import datasets

from .names import names_language
from .schema import ParallelItem, check_languages, items_to_dataset
from .splits import check_split_sizes, split_by_group

CLDR_RELATIONS = ("capital", "official_language", "currency")
DEFAULT_CLDR_LANGUAGES = (
    "en",
    "de",
    "fr",
    "es",
    "it",
    "pt",
    "tr",
    "ru",
    "el",
    "ar",
    "he",
    "hi",
    "th",
    "zh",
    "ja",
    "ko",
)
CURRENCY_DATE = datetime.date(2024, 1, 1)
# Codes of CLDR "territories" that are not countries or dependent territories.
_QUALIFIER = re.compile(r"\s*\([^()]*\)$")
_NOT_COUNTRIES = frozenset("AC CP CQ DG EA EU EZ IC QO TA UN XA XB XK ZZ".split())

# Templates: [X] is the country's name, [Y] the object, both inserted as CLDR spells them (no inflection).
# Where a sentence would need an inflected or article-bearing country name (French/Italian/Portuguese
# "du Japon", "dell'Australia", "do Japão"), the template is an infobox line ("Pays : [X]. Capitale : [Y].");
# Russian, Greek and Turkish use "country [X]" so that [X] stays in the nominative; Spanish "el" precedes
# language names (always masculine), Greek "τα" (language names are neuter plurals).
TEMPLATES: dict[str, dict[str, str]] = {
    "en": {
        "capital": "The capital of [X] is [Y].",
        "official_language": "The official language of [X] is [Y].",
        "currency": "The currency of [X] is the [Y].",
    },
    "de": {
        "capital": "Die Hauptstadt von [X] ist [Y].",
        "official_language": "Die Amtssprache von [X] ist [Y].",
        "currency": "Die Währung von [X] heißt [Y].",
    },
    "fr": {
        "capital": "Pays : [X]. Capitale : [Y].",
        "official_language": "Pays : [X]. Langue officielle : [Y].",
        "currency": "Pays : [X]. Monnaie : [Y].",
    },
    "es": {
        "capital": "La capital de [X] es [Y].",
        "official_language": "El idioma oficial de [X] es el [Y].",
        "currency": "La moneda de [X] es [Y].",
    },
    "it": {
        "capital": "Paese: [X]. Capitale: [Y].",
        "official_language": "Paese: [X]. Lingua ufficiale: [Y].",
        "currency": "Paese: [X]. Valuta: [Y].",
    },
    "pt": {
        "capital": "País: [X]. Capital: [Y].",
        "official_language": "País: [X]. Língua oficial: [Y].",
        "currency": "País: [X]. Moeda: [Y].",
    },
    "tr": {
        "capital": "[X] ülkesinin başkenti: [Y].",
        "official_language": "[X] ülkesinin resmî dili: [Y].",
        "currency": "[X] ülkesinin para birimi: [Y].",
    },
    "ru": {
        "capital": "Столица страны [X] — [Y].",
        "official_language": "Официальный язык страны [X] — [Y].",
        "currency": "Валюта страны [X] — [Y].",
    },
    "el": {
        "capital": "Η πρωτεύουσα της χώρας [X] είναι [Y].",
        "official_language": "Η επίσημη γλώσσα της χώρας [X] είναι τα [Y].",
        "currency": "Το νόμισμα της χώρας [X] είναι [Y].",
    },
    "ar": {
        "capital": "عاصمة [X] هي [Y].",
        "official_language": "اللغة الرسمية في [X] هي [Y].",
        "currency": "عملة [X] هي [Y].",
    },
    "he": {
        "capital": "עיר הבירה של [X] היא [Y].",
        "official_language": "השפה הרשמית של [X] היא [Y].",
        "currency": "המטבע של [X] הוא [Y].",
    },
    "hi": {
        "capital": "[X] की राजधानी [Y] है।",
        "official_language": "[X] की आधिकारिक भाषा [Y] है।",
        "currency": "[X] की मुद्रा [Y] है।",
    },
    "th": {
        "capital": "เมืองหลวงของ[X]คือ[Y]",
        "official_language": "ภาษาราชการของ[X]คือภาษา[Y]",
        "currency": "สกุลเงินของ[X]คือ[Y]",
    },
    "zh": {
        "capital": "[X]的首都是[Y]。",
        "official_language": "[X]的官方语言是[Y]。",
        "currency": "[X]的货币是[Y]。",
    },
    "ja": {
        "capital": "[X]の首都は[Y]です。",
        "official_language": "[X]の公用語は[Y]です。",
        "currency": "[X]の通貨は[Y]です。",
    },
    "ko": {
        "capital": "[X]의 수도는 [Y]입니다.",
        "official_language": "[X]의 공용어는 [Y]입니다.",
        "currency": "[X]의 통화는 [Y]입니다.",
    },
}

# Country -> IANA time zone whose exemplar city is the country's capital. Only unambiguous cases: countries
# whose capital has no time zone of its own (e.g. CH Bern, IN New Delhi, CN Beijing, US Washington), whose
# capital is disputed or moving (BO, CI, ID, IL, TW...), or whose zone is named after the country, are absent.
_CAPITALS = """
AL Europe/Tirane; AM Asia/Yerevan; AO Africa/Luanda; AR America/Argentina/Buenos_Aires; AT Europe/Vienna;
AZ Asia/Baku; BA Europe/Sarajevo; BD Asia/Dhaka; BE Europe/Brussels; BF Africa/Ouagadougou; BG Europe/Sofia;
BJ Africa/Porto-Novo; BS America/Nassau; BT Asia/Thimphu; BW Africa/Gaborone; BY Europe/Minsk; CD Africa/Kinshasa;
CF Africa/Bangui; CG Africa/Brazzaville; CL America/Santiago; CO America/Bogota; CU America/Havana; CY Asia/Nicosia;
CZ Europe/Prague; DE Europe/Berlin; DJ Africa/Djibouti; DK Europe/Copenhagen; DO America/Santo_Domingo;
DZ Africa/Algiers; EE Europe/Tallinn; EG Africa/Cairo; ER Africa/Asmara; ES Europe/Madrid; ET Africa/Addis_Ababa;
FI Europe/Helsinki; FR Europe/Paris; GA Africa/Libreville; GB Europe/London; GE Asia/Tbilisi; GH Africa/Accra;
GM Africa/Banjul; GN Africa/Conakry; GR Europe/Athens; GW Africa/Bissau; HN America/Tegucigalpa; HR Europe/Zagreb;
HT America/Port-au-Prince; HU Europe/Budapest; IE Europe/Dublin; IQ Asia/Baghdad; IR Asia/Tehran;
IS Atlantic/Reykjavik; IT Europe/Rome; JO Asia/Amman; JP Asia/Tokyo; KE Africa/Nairobi; KG Asia/Bishkek;
KH Asia/Phnom_Penh; KI Pacific/Tarawa; KP Asia/Pyongyang; KR Asia/Seoul; LA Asia/Vientiane; LB Asia/Beirut;
LI Europe/Vaduz; LR Africa/Monrovia; LS Africa/Maseru; LT Europe/Vilnius; LU Europe/Luxembourg; LV Europe/Riga;
LY Africa/Tripoli; MD Europe/Chisinau; ME Europe/Podgorica; MG Indian/Antananarivo; MH Pacific/Majuro;
MK Europe/Skopje; ML Africa/Bamako; MN Asia/Ulaanbaatar; MR Africa/Nouakchott; MX America/Mexico_City;
MY Asia/Kuala_Lumpur; MZ Africa/Maputo; NA Africa/Windhoek; NE Africa/Niamey; NI America/Managua;
NL Europe/Amsterdam; NO Europe/Oslo; NP Asia/Kathmandu; OM Asia/Muscat; PE America/Lima; PG Pacific/Port_Moresby;
PH Asia/Manila; PL Europe/Warsaw; PT Europe/Lisbon; PY America/Asuncion; RO Europe/Bucharest; RS Europe/Belgrade;
RU Europe/Moscow; RW Africa/Kigali; SA Asia/Riyadh; SD Africa/Khartoum; SE Europe/Stockholm; SI Europe/Ljubljana;
SK Europe/Bratislava; SL Africa/Freetown; SM Europe/San_Marino; SN Africa/Dakar; SO Africa/Mogadishu;
SR America/Paramaribo; SS Africa/Juba; ST Africa/Sao_Tome; SY Asia/Damascus; TD Africa/Ndjamena; TG Africa/Lome;
TH Asia/Bangkok; TJ Asia/Dushanbe; TL Asia/Dili; TM Asia/Ashgabat; TN Africa/Tunis; TT America/Port_of_Spain;
TV Pacific/Funafuti; UA Europe/Kyiv; UG Africa/Kampala; UY America/Montevideo; UZ Asia/Tashkent;
VE America/Caracas; WS Pacific/Apia; ZM Africa/Lusaka; ZW Africa/Harare
"""
CAPITAL_TIME_ZONES: dict[str, str] = dict(entry.split() for entry in _CAPITALS.replace("\n", " ").split(";"))


def _babel():
    """Import babel lazily, with an actionable error when it is missing."""
    try:
        import babel  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "CLDR facts need the `babel` package: `pip install babel` (or `pip install hf_lime[demo]`)."
        ) from error
    from babel import Locale
    from babel.core import get_global
    from babel.languages import get_official_languages
    from babel.numbers import get_territory_currencies

    return Locale, get_global, get_official_languages, get_territory_currencies


class _Cldr:
    """The babel functions and locales needed to name subjects and objects in several languages."""

    def __init__(self, languages: list[str]) -> None:
        locale_cls, get_global, self.official_languages, self.territory_currencies = _babel()
        from babel.core import UnknownLocaleError

        self.locales = {}
        for lang in languages:
            try:
                self.locales[lang] = locale_cls.parse(lang)
            except (UnknownLocaleError, ValueError) as error:
                raise ValueError(f"babel has no CLDR locale for language {lang!r} ({error}).") from None
        likely = get_global("likely_subtags")
        self.latin = {lang: "_Latn" in likely.get(lang, lang) or "Latn" in lang for lang in languages}
        self.zone_aliases = get_global("zone_aliases")
        self.zone_names: dict[str, list[str]] = {}
        for alias, canonical in sorted(self.zone_aliases.items()):
            self.zone_names.setdefault(canonical, []).append(alias)

    def countries(self) -> list[str]:
        """ISO 3166 codes of territories that every requested locale names, sorted."""
        codes = {code for code in self.locales[next(iter(self.locales))].territories}
        codes = {c for c in codes if len(c) == 2 and c.isalpha() and c not in _NOT_COUNTRIES}
        return sorted(c for c in codes if all(c in loc.territories for loc in self.locales.values()))

    def object_id(self, relation: str, country: str) -> str | None:
        """Language-independent id of the country's unique object, or None (none, or ambiguous)."""
        if relation == "capital":
            return CAPITAL_TIME_ZONES.get(country)
        if relation == "official_language":
            found = self.official_languages(country, de_facto=True)
        else:
            found = self.territory_currencies(country, start_date=CURRENCY_DATE, tender=True)
        return found[0] if len(found) == 1 else None

    def city(self, lang: str, zone: str) -> str | None:
        """CLDR's exemplar city of `zone` in `lang`; the id-derived name only for Latin-script languages."""
        canonical = self.zone_aliases.get(zone, zone)
        for key in [zone, canonical, *self.zone_names.get(canonical, [])]:
            city = self.locales[lang].time_zones.get(key, {}).get("city")
            if city:
                return _QUALIFIER.sub("", city)  # "Tripoli (Libye)" -> "Tripoli"
        return zone.rsplit("/", 1)[-1].replace("_", " ") if self.latin[lang] else None

    def object_label(self, relation: str, lang: str, object_id: str) -> str | None:
        """The object's name in `lang`, or None when CLDR has none."""
        if relation == "capital":
            return self.city(lang, object_id)
        names = self.locales[lang].languages if relation == "official_language" else self.locales[lang].currencies
        return names.get(object_id)


def _check_relations(relations: Sequence[str]) -> list[str]:
    if isinstance(relations, str):
        raise TypeError(f"relations must be a list of relation names, not the string {relations!r}.")
    relations = list(relations)
    unknown = [r for r in relations if r not in CLDR_RELATIONS]
    if not relations or unknown or len(set(relations)) != len(relations):
        raise ValueError(f"relations must be distinct names among {CLDR_RELATIONS}, got {relations}.")
    return relations


def _merge_templates(templates: Mapping[str, Mapping[str, str]] | None) -> dict[str, dict[str, str]]:
    merged = {lang: dict(by_relation) for lang, by_relation in TEMPLATES.items()}
    for lang, by_relation in (templates or {}).items():
        for relation, template in by_relation.items():
            if relation not in CLDR_RELATIONS:
                raise ValueError(f"templates[{lang!r}] has unknown relation {relation!r}; allowed: {CLDR_RELATIONS}.")
            if not isinstance(template, str) or "[X]" not in template or "[Y]" not in template:
                raise ValueError(f"templates[{lang!r}][{relation!r}] = {template!r} must contain '[X]' and '[Y]'.")
            merged.setdefault(lang, {})[relation] = template
    return merged


def cldr_languages(templates: Mapping[str, Mapping[str, str]] | None = None) -> list[str]:
    """Languages that have templates (ours plus `templates`), sorted.

    Args:
        templates (`Mapping[str, Mapping[str, str]]`, *optional*): extra templates, language -> relation -> text.

    Returns:
        `list[str]`: language codes.
    """
    return sorted(_merge_templates(templates))


def build_cldr_items(
    languages: Sequence[str] | None = None,
    relations: Sequence[str] = CLDR_RELATIONS,
    templates: Mapping[str, Mapping[str, str]] | None = None,
    label_language: str | None = None,
) -> list[ParallelItem]:
    """Generate the CLDR facts as parallel items (no split). Arguments as in `load_cldr_facts`.

    Returns:
        `list[ParallelItem]`: ordered by relation (as requested), then by country code.
    """
    languages = check_languages(DEFAULT_CLDR_LANGUAGES if languages is None else languages)
    relations = _check_relations(relations)
    label_language = names_language(label_language, languages)
    merged = _merge_templates(templates)
    for lang in languages:
        missing = [r for r in relations if r not in merged.get(lang, {})]
        if missing:
            raise ValueError(
                f"No CLDR template for language {lang!r} and relations {missing}; languages with templates: "
                f"{sorted(merged)} (pass templates={{{lang!r}: {{relation: '... [X] ... [Y] ...'}}}} to add one)."
            )
    cldr = _Cldr(languages)
    countries = cldr.countries()
    items = []
    for relation in relations:
        for country in countries:
            object_id = cldr.object_id(relation, country)
            if object_id is None:
                continue
            labels = [cldr.object_label(relation, lang, object_id) for lang in languages]
            if any(not label for label in labels):
                continue
            subjects = [cldr.locales[lang].territories[country] for lang in languages]
            if label_language is not None:  # the LiME reference's protocol: one language's names everywhere
                position = languages.index(label_language)
                labels, subjects = [labels[position]] * len(languages), [subjects[position]] * len(languages)
            items.append(_item(relation, country, object_id, languages, subjects, labels, merged))
    return items


def _item(relation: str, country: str, object_id: str, languages, subjects, labels, templates) -> ParallelItem:
    return ParallelItem(
        id=f"cldr:{relation}:{country}",
        source="cldr",
        relation=relation,
        group=country,
        target_id=object_id,
        languages=list(languages),
        prompts=[
            templates[lang][relation].replace("[X]", subject)
            for lang, subject in zip(languages, subjects, strict=True)
        ],
        pairs=["" for _ in languages],
        targets=list(labels),
    )


def load_cldr_facts(
    languages: Sequence[str] | None = None,
    relations: Sequence[str] = CLDR_RELATIONS,
    seed: int = 0,
    split_sizes: Sequence[float] = (0.8, 0.1, 0.1),
    templates: Mapping[str, Mapping[str, str]] | None = None,
    label_language: str | None = None,
) -> datasets.DatasetDict:
    """Generate parallel facts from CLDR (via `babel`) and split them by country.

    Args:
        languages (`Sequence[str]`, *optional*): language codes with templates; defaults to
            `DEFAULT_CLDR_LANGUAGES` (16 languages, 9 of them in non-Latin scripts).
        relations (`Sequence[str]`, *optional*, defaults to `CLDR_RELATIONS`): among ``"capital"``,
            ``"official_language"``, ``"currency"``.
        seed (`int`, *optional*, defaults to `0`): seed of the country split.
        split_sizes (`Sequence[float]`, *optional*, defaults to `(0.8, 0.1, 0.1)`): fractions of the countries.
        templates (`Mapping[str, Mapping[str, str]]`, *optional*): extra or replacement templates,
            language -> relation -> text with ``[X]`` (country) and ``[Y]`` (object).
        label_language (`str`, *optional*, defaults to `"own"`): whose names fill the templates (see
            `hf_lime.data.names`). `"own"` (or `None`): each language's own country and object names. One of
            `languages`: that language's names in every language's template (translated templates, untranslated
            names); the answer is then the same string everywhere. `"editing"` needs one dataset per editing
            language (load each with `label_language=<language>`).

    Returns:
        `datasets.DatasetDict`: ``train``, ``validation``, ``test`` in the common schema; a country is in one
        split for all relations.

    Example:

    ```python
    >>> from hf_lime.data import load_cldr_facts
    >>> splits = load_cldr_facts(["en", "zh"], relations=["capital"])
    >>> row = next(r for s in splits.values() for r in s if r["id"] == "cldr:capital:FR")
    >>> row["prompts"], row["targets"], row["target_id"]
    (['The capital of France is [Y].', '法国的首都是[Y]。'], ['Paris', '巴黎'], 'Europe/Paris')

    ```
    """
    check_split_sizes(split_sizes)
    items = build_cldr_items(languages, relations, templates, label_language)
    return split_by_group(items_to_dataset(items), split_sizes, seed)
