"""The Slicer Extensions Index's checks, applied to ``CalibSeg.json`` and the repository.

The index (``scripts/check_description_files.py`` of Slicer/ExtensionsIndex) clones the
repository named by the description file and rejects the extension when: the description
does not validate against the catalog-entry schema named by its ``$schema``; the file has
CR line endings; the extension name starts with "Slicer" or the repository name does not;
``scm_url`` is not a git/https URL; the category is not one of the index's categories; the
top-level ``CMakeLists.txt``'s ``project()`` name differs from the description's file name
or it lacks the icon/screenshot URLs; there is no licence file at the root; or the checkout
exceeds 100 MB. Each check is re-implemented here from that description (no network).
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse

import jsonschema
import pytest
from extension_layout import ROOT, read, repository_files

DESCRIPTION = os.path.join(ROOT, "CalibSeg.json")
SCHEMA_URL = ("https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/"
              "slicer-extension-catalog-entry-schema-v1.0.1.json")

#: The catalog-entry schema v1.0.1 (Slicer/Schemas): three required keys, no other keys
#: than these, tier an integer 1..5, scm_type "git" or "local".
CATALOG_ENTRY_SCHEMA = {
    "$schema": "http://json-schema.org/draft-07/schema",
    "type": "object",
    "required": ["$schema", "category", "scm_url"],
    "additionalProperties": False,
    "properties": {
        "$schema": {"type": "string"},
        "category": {"type": "string"},
        "scm_url": {"type": "string"},
        "scm_revision": {"type": "string"},
        "scm_type": {"type": "string", "enum": ["git", "local"]},
        "build_dependencies": {"type": "array", "items": {"type": "string"}},
        "build_subdirectory": {"type": "string"},
        "enabled": {"type": "boolean"},
        "tier": {"type": "integer", "minimum": 1, "maximum": 5},
    },
}
#: Licence file names the index accepts at the repository root.
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING",
                 "COPYING.txt")
#: Repository name prefixes the index accepts.
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")
#: A few of the index's accepted categories (the one used must be among them).
KNOWN_CATEGORIES = ("Segmentation", "Quantification", "Analysis", "Utilities", "Neuroimaging")
SIZE_LIMIT_MB = 100


@pytest.fixture(scope="module")
def entry() -> dict:
    with open(DESCRIPTION, encoding="utf-8") as fh:
        return json.load(fh)


def test_schema_itself_is_valid():
    jsonschema.Draft7Validator.check_schema(CATALOG_ENTRY_SCHEMA)


def test_description_validates_against_the_catalog_entry_schema(entry):
    assert entry["$schema"].split("#")[0] == SCHEMA_URL
    jsonschema.validate(entry, CATALOG_ENTRY_SCHEMA)


@pytest.mark.parametrize("broken", [
    {"category": "Segmentation"},  # no scm_url
    {"category": "Segmentation", "scm_url": "https://x/SlicerY.git", "tier": 7},
    {"category": "Segmentation", "scm_url": "https://x/SlicerY.git", "version": "1"},
])
def test_schema_rejects_what_the_index_rejects(broken):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"$schema": SCHEMA_URL, **broken}, CATALOG_ENTRY_SCHEMA)


def test_description_file_uses_lf_line_endings():
    with open(DESCRIPTION, "rb") as fh:
        assert b"\r" not in fh.read()


def test_extension_and_repository_names(entry):
    name = os.path.splitext(os.path.basename(DESCRIPTION))[0]
    assert not name.lower().startswith("slicer")
    url = entry["scm_url"]
    assert "://" in url and urllib.parse.urlsplit(url).scheme in ("git", "https")
    repository = os.path.splitext(urllib.parse.urlsplit(url.strip("/")).path.split("/")[-1])[0]
    assert repository.startswith(REPOSITORY_PREFIXES), repository
    assert entry["category"] in KNOWN_CATEGORIES
    assert entry["build_dependencies"] == ["PyTorch"]


def test_cmake_project_name_equals_description_name():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    names = re.findall(r"project\s*\(\s*([^\s)]+)", text, re.IGNORECASE)
    assert names and names[0].strip("\"'") == "CalibSeg"
    category = re.search(r'set\(EXTENSION_CATEGORY\s+"([^"]+)"\)', text).group(1)
    with open(DESCRIPTION, encoding="utf-8") as fh:
        assert json.load(fh)["category"] == category


def test_cmake_icon_and_screenshot_urls_point_at_repository_images():
    text = read(os.path.join(ROOT, "CMakeLists.txt"))
    icon = re.findall(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', text)
    shots = re.findall(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', text)
    assert icon and shots
    urls = [icon[0].strip()] + shots[0].split()
    for url in urls:
        assert url.startswith("https://raw.githubusercontent.com/calibseg/SlicerCalibSeg/main/")
        relative = url.split("/main/", 1)[1]
        assert relative.lower().endswith((".png", ".jpg", ".jpeg", ".gif")), url
        assert relative in repository_files(relative), f"{relative} is not in the repository"


def test_licence_file_at_root_matches_pyproject():
    found = [n for n in LICENSE_NAMES if os.path.isfile(os.path.join(ROOT, n))]
    assert found, "no licence file at the repository root"
    text = read(os.path.join(ROOT, found[0]))
    declared = re.search(r'^license\s*=\s*"([^"]+)"', read(os.path.join(ROOT, "pyproject.toml")),
                         re.M).group(1)
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text
    assert found[0] in repository_files(found[0])


def test_repository_checkout_is_under_the_size_limit():
    total = sum(os.path.getsize(os.path.join(ROOT, f)) for f in repository_files("."))
    assert total / 2**20 < SIZE_LIMIT_MB
