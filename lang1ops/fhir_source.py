"""Read a hospital's FHIR data from disk: Bulk Data exports, ndjson files, Bundles.

`iter_resources` yields every resource it finds with where it found it, and records every
line or entry it cannot use in a `ProblemLog` instead of raising: one bad line in a million
must neither stop a run nor vanish. It only checks that a resource is a JSON object with a
resourceType; validating against the FHIR models is the caller's (slower) job.

Problems carry locations and reasons, never content: exports hold PHI.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

MANIFEST = "manifest.json"
BUNDLE_TYPES = frozenset({"transaction", "batch", "collection", "searchset", "history", "document"})


@dataclass
class Problem:
    reason: str  # e.g. "malformed-json", "not-a-resource", "no-resource-type", "missing-file"
    location: str  # "Encounter.ndjson:17" or "bundles/b1.json#entry[3]"; never content
    resource_type: str | None = None
    resource_id: str | None = None
    detail: str = ""  # never content


class ProblemLog:
    """Counts every problem by reason and keeps the first few of each as examples, so a
    badly broken export does not fill memory."""

    def __init__(self, max_examples: int = 20):
        self.max_examples = max_examples
        self._counts: Counter[str] = Counter()
        self._examples: defaultdict[str, list[Problem]] = defaultdict(list)
        self.repairs: Counter[str] = Counter()  # what was read leniently, by kind: counted, never silent

    def repaired(self, kind: str, n: int = 1) -> None:
        self.repairs[kind] += n

    def add(self, problem: Problem) -> None:
        self._counts[problem.reason] += 1
        if len(self._examples[problem.reason]) < self.max_examples:
            self._examples[problem.reason].append(problem)

    def counts(self) -> dict[str, int]:
        return dict(sorted(self._counts.items()))

    def examples(self, reason: str, limit: int = 5) -> list[Problem]:
        return list(self._examples.get(reason, [])[:limit])

    def __len__(self) -> int:
        return sum(self._counts.values())

    def to_dict(self) -> dict:
        return {
            "counts": self.counts(),
            "examples": {reason: [asdict(p) for p in self._examples[reason]] for reason in self.counts()},
            "repairs": dict(sorted(self.repairs.items())),
        }


def iter_resources(path: Path, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    """(resource, location) for every resource under `path`: a Bulk Data export directory (or
    its manifest.json), a directory of *.ndjson / *.ndjson.gz / *.json files, or one such file.
    Directories are walked recursively in sorted order; a subdirectory with a manifest is read
    as an export. Locations are relative to `path`."""
    path = Path(path)
    root = path if path.is_dir() else path.parent
    if path.is_dir():
        yield from _iter_directory(path, root, problems)
    elif path.name == MANIFEST:
        yield from _iter_directory(path.parent, root, problems)
    elif path.is_file():
        yield from _iter_file(path, root, problems)
    else:
        problems.add(Problem("missing-file", path.name, detail="no such file or directory"))


class ManifestError(ValueError):
    """manifest.json parses but is not a Bulk Data manifest."""


def load_manifest(path: Path) -> dict | None:
    """The Bulk Data manifest of the export directory `path` (or the manifest file itself);
    None when there is none. Raises ValueError when it is not a usable manifest."""
    path = Path(path)
    manifest_path = path / MANIFEST if path.is_dir() else path
    if not manifest_path.is_file() or manifest_path.name != MANIFEST:
        return None
    manifest = json.loads(manifest_path.read_bytes().decode("utf-8-sig"))  # JSONDecodeError is a ValueError
    if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
        raise ManifestError("a Bulk Data manifest is a JSON object with an 'output' list")
    return manifest


# --- directories and manifests ------------------------------------------------------------------


def _iter_directory(directory: Path, root: Path, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    if (directory / MANIFEST).is_file():
        try:
            manifest = load_manifest(directory)
        except (ValueError, OSError) as exc:
            # Still read what is there: the data files are usually fine when the manifest is not.
            problems.add(Problem("invalid-manifest", _relative(directory / MANIFEST, root), detail=_why(exc)))
        else:
            assert manifest is not None
            yield from _iter_export(directory, manifest, root, problems)
            return
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(".") or entry.name == MANIFEST:
            continue
        if entry.is_dir():
            yield from _iter_directory(entry, root, problems)
        elif _is_data_file(entry):
            yield from _iter_file(entry, root, problems)


def _iter_export(
    directory: Path, manifest: dict, root: Path, problems: ProblemLog
) -> Iterator[tuple[dict, str]]:
    """The files the manifest lists under `output`, in its order. Its `error` files hold the
    server's OperationOutcomes: recorded as problems, not yielded. Export files are ndjson
    whatever they are called (servers may serve them without an extension)."""
    for file in _listed_files(directory, manifest, "output", root, problems):
        yield from _iter_ndjson(file, _relative(file, root), problems)
    for file in _listed_files(directory, manifest, "error", root, problems):
        for outcome, location in _iter_ndjson(file, _relative(file, root), problems):
            problems.add(
                Problem("export-error", location, outcome["resourceType"], detail=_issue_codes(outcome))
            )


def _listed_files(
    directory: Path, manifest: dict, key: str, root: Path, problems: ProblemLog
) -> Iterator[Path]:
    where = _relative(directory / MANIFEST, root)
    listed = manifest.get(key)
    for i, item in enumerate(listed if isinstance(listed, list) else []):
        url = item.get("url") if isinstance(item, dict) else None
        if not isinstance(url, str) or not url:
            problems.add(Problem("invalid-manifest", f"{where}#{key}[{i}]", detail="entry has no url"))
            continue
        file = _file_of_url(url, directory)
        if file.is_file():
            yield file
        else:
            declared = item.get("type")
            resource_type = declared if isinstance(declared, str) else None
            problems.add(
                Problem("missing-file", _relative(file, root), resource_type, detail=f"listed in {where}")
            )


def _file_of_url(url: str, directory: Path) -> Path:
    """A manifest url as a local file: a path relative to the manifest, a file:// URL, or an
    http(s) URL of a file downloaded next to the manifest (looked up by its last segment)."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        local = Path(url2pathname(unquote(parsed.path)))
    elif parsed.scheme in ("http", "https"):
        local = Path(unquote(parsed.path.rstrip("/").rsplit("/", 1)[-1]))
    else:
        local = Path(unquote(url))
    return local if local.is_absolute() else directory / local


# --- files --------------------------------------------------------------------------------------


def _is_data_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith((".ndjson", ".ndjson.gz", ".json"))


def _iter_file(path: Path, root: Path, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    where = _relative(path, root)
    if path.name.endswith((".ndjson", ".ndjson.gz")):
        yield from _iter_ndjson(path, where, problems)
    elif path.name.endswith(".json"):
        try:
            value = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (ValueError, OSError, RecursionError) as exc:
            problems.add(Problem(_read_reason(exc), where, detail=_why(exc)))
            return
        yield from _resources_in(value, where, problems)
    else:
        problems.add(Problem("unsupported-file", where, detail="expected .ndjson, .ndjson.gz or .json"))


def _iter_ndjson(path: Path, where: str, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    # Lines are read as bytes and decoded one by one so a bad byte costs one line, not the file.
    opener = gzip.open if path.name.endswith(".gz") else open
    line_number = 0
    try:
        with opener(path, "rb") as lines:
            for line_number, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                try:
                    value = json.loads(raw.decode("utf-8-sig"))
                except (ValueError, RecursionError) as exc:
                    problems.add(Problem("malformed-json", f"{where}:{line_number}", detail=_why(exc)))
                    continue
                yield from _resources_in(value, f"{where}:{line_number}", problems)
    except (OSError, EOFError, zlib.error) as exc:  # unreadable, corrupt or truncated gzip
        problems.add(Problem("unreadable-file", f"{where}:{line_number + 1}", detail=_why(exc)))


def _resources_in(value: object, where: str, problems: ProblemLog) -> Iterator[tuple[dict, str]]:
    """The resource `value`, or the resources in it when it is a Bundle (nested ones too)."""
    if not isinstance(value, dict):
        problems.add(Problem("not-a-resource", where, detail=f"a JSON {type(value).__name__}, not an object"))
        return
    resource_type, resource_id = value.get("resourceType"), value.get("id")
    resource_id = resource_id if isinstance(resource_id, str) else None
    if not isinstance(resource_type, str) or not resource_type:
        problems.add(Problem("no-resource-type", where, resource_id=resource_id))
        return
    if resource_type != "Bundle":
        yield value, where
        return
    bundle_type = value.get("type")
    if not isinstance(bundle_type, str) or bundle_type not in BUNDLE_TYPES:
        problems.add(
            Problem(
                "unsupported-bundle-type", where, "Bundle", resource_id, detail=f"type {bundle_type!r}"[:60]
            )
        )
        return
    entries = value.get("entry") or []
    entries = entries if isinstance(entries, list) else []
    _resolve_bundle_references(entries, problems)
    for i, entry in enumerate(entries):
        entry_where = f"{where}#entry[{i}]" if "#" not in where else f"{where}.entry[{i}]"
        if isinstance(entry, dict) and "resource" in entry:
            yield from _resources_in(entry["resource"], entry_where, problems)
        else:
            # A history or transaction DELETE has no resource; counted so nothing vanishes unexplained.
            request = entry.get("request") if isinstance(entry, dict) else None
            method = request.get("method") if isinstance(request, dict) else None
            detail = f"request method {method}"[:40] if isinstance(method, str) else ""
            problems.add(Problem("entry-without-resource", entry_where, detail=detail))


def _resolve_bundle_references(entries: list, problems: ProblemLog) -> None:
    """Point references made through an entry's fullUrl ("urn:uuid:...", as Synthea and most
    transaction Bundles write them, or an absolute URL) at "Type/id", so a reader sees the
    same references it would in Bulk Data ndjson. A resource without an id gets the uuid of its
    urn:uuid fullUrl. Counted as repairs ("bundle-reference", "bundle-id")."""
    targets: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
            continue
        resource, full_url = entry["resource"], entry.get("fullUrl")
        kind = resource.get("resourceType")
        if not isinstance(full_url, str) or not isinstance(kind, str):
            continue
        if not isinstance(resource.get("id"), str) and full_url.startswith("urn:uuid:"):
            resource["id"] = full_url.removeprefix("urn:uuid:")
            problems.repaired("bundle-id")
        if isinstance(resource.get("id"), str):
            targets[full_url] = f"{kind}/{resource['id']}"
    if not targets:
        return
    for entry in entries:
        if isinstance(entry, dict) and isinstance(entry.get("resource"), dict):
            _rewrite_references(entry["resource"], targets, problems)


def _rewrite_references(value: object, targets: dict[str, str], problems: ProblemLog, depth: int = 0) -> None:
    if depth > 64:  # FHIR nests a dozen levels; deeper is not a resource
        return
    if isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and reference in targets:
            value["reference"] = targets[reference]
            problems.repaired("bundle-reference")
        for child in value.values():
            if isinstance(child, dict | list):
                _rewrite_references(child, targets, problems, depth + 1)
    elif isinstance(value, list):
        for child in value:
            if isinstance(child, dict | list):
                _rewrite_references(child, targets, problems, depth + 1)


class IdentifierIndex:
    """References by business identifier (`{"type": "Encounter", "identifier": {system, value}}`,
    no `reference`), as EHRs write them for resources they identify by MRN, account or visit
    number: the index learns every resource's identifiers as it is read and gives such a
    reference the "Type/id" of the one resource that carries that identifier. A resource whose
    target is not read yet waits (`resolve(..., final=False)` is False) until the whole export
    is read. Counted as repairs ("identifier-reference"); one that matches no resource, or more
    than one, stays unresolved, reported as a problem ("unresolved-identifier-reference")."""

    def __init__(self) -> None:
        self._targets: dict[tuple[str, str], set[str]] = defaultdict(set)  # (system, value) -> {"Type/id"}

    def learn(self, resource: dict) -> None:
        kind, resource_id, identifiers = resource.get("resourceType"), resource.get("id"), resource.get("identifier")
        if not isinstance(kind, str) or not isinstance(resource_id, str):
            return
        for identifier in identifiers if isinstance(identifiers, list) else [identifiers]:
            if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
                self._targets[(str(identifier.get("system") or ""), identifier["value"])].add(f"{kind}/{resource_id}")

    def resolve(self, resource: dict, location: str, problems: ProblemLog, final: bool) -> bool:
        """Fill in `reference` on every identifier-only reference of `resource` that has exactly
        one target. False when some reference has none yet and `final` is False (nothing is
        changed then, so the resource can be tried again); with `final`, what cannot be
        resolved is left as it is and reported."""
        pending = list(_identifier_references(resource))
        if not pending:
            return True
        matches = [self._match(ref) for ref in pending]
        if not final and any(match is None for match in matches):
            return False
        for ref, match in zip(pending, matches, strict=True):
            if match is None:
                kind, resource_id = resource.get("resourceType"), resource.get("id")
                problems.add(Problem("unresolved-identifier-reference", location, kind if isinstance(kind, str) else None,
                                     resource_id if isinstance(resource_id, str) else None,
                                     detail=f"{self._count(ref)} resources carry the identifier"))
            else:
                ref["reference"] = match
                problems.repaired("identifier-reference")
        return True

    def _candidates(self, ref: dict) -> set[str]:
        identifier, kind = ref["identifier"], ref.get("type")
        candidates = self._targets.get((str(identifier.get("system") or ""), str(identifier.get("value"))), set())
        return {c for c in candidates if c.startswith(kind + "/")} if isinstance(kind, str) else candidates

    def _match(self, ref: dict) -> str | None:
        candidates = self._candidates(ref)
        return next(iter(candidates)) if len(candidates) == 1 else None

    def _count(self, ref: dict) -> int:
        return len(self._candidates(ref))


# The elements of a FHIR Reference: an element with others (Claim.insurance has an `identifier`
# too) is not one.
_REFERENCE_KEYS = frozenset({"id", "extension", "reference", "type", "identifier", "display"})


def _identifier_references(value: object, depth: int = 0) -> Iterator[dict]:
    """Reference elements that name their target only by identifier. A resource's own
    `identifier` (a list, or a single one on Composition) is not a reference: depth 0 is skipped."""
    if depth > 64:
        return
    if isinstance(value, dict):
        if depth and isinstance(value.get("identifier"), dict) and not value.get("reference") and value.keys() <= _REFERENCE_KEYS:
            yield value
        for child in value.values():
            if isinstance(child, dict | list):
                yield from _identifier_references(child, depth + 1)
    elif isinstance(value, list):
        for child in value:
            if isinstance(child, dict | list):
                yield from _identifier_references(child, depth + 1)


def _issue_codes(outcome: dict) -> str:
    issues = outcome.get("issue")
    codes = (
        {str(i.get("code"))[:40] for i in issues if isinstance(i, dict)}
        if isinstance(issues, list)
        else set()
    )
    return "issue codes: " + (", ".join(sorted(codes)) or "none")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # a manifest may point outside its directory
        return path.as_posix()


def _read_reason(exc: BaseException) -> str:
    return "unreadable-file" if isinstance(exc, OSError) else "malformed-json"


def _why(exc: BaseException) -> str:
    """What went wrong without quoting data: JSON errors name a position, others their class."""
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at line {exc.lineno} column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not valid UTF-8 at byte {exc.start}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    if isinstance(exc, ManifestError):
        return str(exc)
    return type(exc).__name__
