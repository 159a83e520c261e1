"""The reviewer's words for trainees: identifiers as phrases, names by parts, dates, phones,
and the measurements a teaching case keeps (:func:`usreview.teaching.scrub_text`)."""

from __future__ import annotations

from typing import Any

import pytest

from usreview.hub.api.teaching_cases import _case_text, _Identifiers
from usreview.teaching import scrub_text

CLINICAL = "Moderate stenosis of the left ICA. Normal flow in the CCA. ST segment normal."


def test_institutions_and_stations_are_removed_as_whole_phrases() -> None:
    """Their words (``of``, ``the``, ``St``) stay in the expert's text; the phrase goes."""
    places = ["Royal Infirmary of the North", "St Mary Hospital", "US-ROOM-2"]
    assert scrub_text(CLINICAL, places) == CLINICAL
    typed = "From royal  infirmary\nof the North; scanned in US-ROOM-2 at St Mary Hospital."
    assert scrub_text(typed, places) == "From [removed]; scanned in [removed] at [removed]."


def test_person_names_are_removed_by_their_parts_but_particles_and_titles_stay() -> None:
    names = ["DE LA CRUZ^MARIA", "HOUSE^GREGORY^^DR", "VAN DER BERG^ANNA", "ST JOHN^PAUL"]
    text = "Dr House saw Mrs de la Cruz (Maria); Cruz agrees. Anna van der Berg. Mr St John. "
    text += CLINICAL
    cleaned = scrub_text(text, names)  # a value holding ^ is a person name
    assert cleaned == (
        "Dr [removed] saw Mrs [removed] ([removed]); [removed] agrees. [removed] [removed]. "
        "Mr [removed]. " + CLINICAL
    )


@pytest.mark.parametrize("surname", ["LONG", "WHITE", "DE"])
def test_a_surname_alone_is_removed_even_if_it_is_a_word(surname: str) -> None:
    """Privacy first: a family name of one word goes wherever it stands."""
    text = f"Mrs {surname.title()}: long axis, white plaque, de novo."
    cleaned = scrub_text(text, [f"{surname}^JANE"])
    assert surname.lower() not in cleaned.lower().split(), cleaned


@pytest.mark.parametrize(
    "typed",
    [
        "seen 14-Mar-2024",
        "Prior 14-MAR-24",
        "seen 14Mar2024",
        "seen 14.Mar.2024 and 2024-Mar-14",
        "since Mar-2024",
        "Tel 020 7946 0958",
        "mobile 07700 900123",
        "call +44 20 7946 0958",
        "call +1 (555) 123-4567 or 555.123.4567",
        "call +44 (0)20 7946 0958",
    ],
)
def test_dates_and_telephone_numbers_in_common_formats_go(typed: str) -> None:
    cleaned = scrub_text(typed, [])
    assert not any(c.isdigit() for c in cleaned), cleaned
    assert "mar" not in cleaned.lower(), cleaned


def test_clinical_numbers_and_years_alone_stay() -> None:
    text = (
        "PSV 125 cm/s; PSV 1.25 m/s; ratio 3.2; RI 0.72; RI 0.72 0.68 0.70; 12 x 8 mm; "
        "12 x 8 x 10 mm; 72 bpm; stenosis 50-69%; 32+4 weeks; GA 32+4; since 2019; "
        "2019-2021; PSV 120 150 180; PSV 120 150 180 cm/s; EDV 30 35 40 45 cm/s; May 2 mm."
    )
    # "May 2" is a date to the scrubber (privacy first); everything else stays.
    assert scrub_text(text, []) == text.replace("May 2", "[date]")


def _measurement(**changes: Any) -> dict[str, Any]:
    item = {
        "name": "distance",
        "value": 9.0,
        "unit": "mm",
        "code": {"value": "121206", "scheme": "DCM", "meaning": "Distance"},
        "origin": "reviewer",
        "decision": "accepted",
        "source_instance": "1.2.3",
        "label": "Cyst depth",
    }
    return {**item, **changes}


def test_a_measurement_keeps_known_codes_and_units() -> None:
    area = _measurement(unit="mm2", code={"value": "42798000", "scheme": "SCT", "meaning": "Area"})
    kept = _case_text({"measurements": [_measurement(), area]}, _Identifiers())["measurements"]
    assert [m["code"]["value"] for m in kept] == ["121206", "42798000"]
    assert [m["unit"] for m in kept] == ["mm", "mm2"] and "source_instance" not in kept[0]


def test_a_measurements_code_and_unit_are_cleaned_of_identifiers() -> None:
    """A code of an unknown scheme, or whose value held an identifier, is dropped; a unit
    that is not a plausible UCUM unit drops the whole measurement (its value may be the
    identifier)."""
    who = _Identifiers(phrases=["P-998877", "St Mary Hospital"], names=["DOE^JANE"])
    items = [
        _measurement(code={"value": "P-998877", "scheme": "DCM", "meaning": "Distance"}),
        _measurement(code={"value": "121206", "scheme": "DOE", "meaning": "Distance"}),
        _measurement(code={"value": "Doe 14/03", "scheme": "99USREVIEW", "meaning": "x"}),
        _measurement(code={"value": "998877123", "scheme": "SCT", "meaning": "Area"}),
        _measurement(unit="Doe"),
        _measurement(unit="mm", label="Jane's cyst"),
        _measurement(value=998877.0, unit="MRN-998877"),
        _measurement(unit="0207946"),
        _measurement(unit="St Mary Hospital"),
        _measurement(unit=["mm"]),
    ]
    kept = _case_text({"measurements": items}, who)["measurements"]
    assert [m["code"] for m in kept[:4]] == [None, None, None, None]
    assert len(kept) == 5 and kept[4]["label"] == "[removed]'s cyst"
    assert "998877" not in repr(kept) and "doe" not in repr(kept).lower()
