"""Coverage measured from what ran: per target, each ioctl's outcomes witnessed (success or the
errno), and on the model each raise site reached (model/outcomes.py records them as the model
answers), with the tests that reached it. A site counts as confirmed when one of those tests
also passed on a kernel target of the same document (run side by side, or merged).

Not every raise site can be reached from user space: conformance/coverage_unreachable.json lists
those that cannot (or only through fault injection, a race, another driver, a resource limit),
each keyed by its stable name (model/outcomes.py raise_site_names()) with its kind and reason.
The figure is over the rest, the reachable sites: how many a run reached and confirmed. A listed
site that a run reached anyway is flagged (the list is wrong there), and so is a listed name no
raise site has any more (tool_tests/test_coverage.py fails on that).

A document is plain JSON, so two runs merge (`merge()`: the suite plus a campaign, the model run
plus a VM run); `run --coverage FILE` and `explore --coverage FILE` write one, merging into FILE
when it exists.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

KERNEL_TARGETS = ("kernel", "vm")  # target names (before '=' / ':') that are a real kernel


def _is_kernel(target: str) -> bool:
    return target.split("=")[0].split(":")[0] in KERNEL_TARGETS


def empty() -> dict:
    return {"version": 1, "outcomes": {}, "passed": {}, "sites": {}}


def _tally(answers) -> dict[str, dict[str, int]]:
    """(ioctl name, errno or 0, count) -> ioctl -> {"success" or the errno's name: count}."""
    from conformance.report import errno_name

    outs: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, e, n in answers:
        outs[name]["success" if e == 0 else errno_name(e)] += n
    return {k: dict(v) for k, v in outs.items()}


def from_results(target: str, results) -> dict:
    """A document from one target's CaseResults (conformance/report.py): outcomes per ioctl from
    each test's calls, the tests that passed, and the model's raise sites per test."""
    doc = empty()
    sites: dict[str, set[str]] = defaultdict(set)
    for r in results:
        for site in getattr(r, "sites", {}):
            sites[site].add(r.nodeid)
    doc["outcomes"][target] = _tally((name, e, 1) for r in results for name, e in r.calls)
    doc["passed"][target] = sorted(r.nodeid for r in results if r.outcome == "passed")
    doc["sites"] = {s: sorted(t) for s, t in sites.items()}
    return doc


def from_outcomes(target: str, counts, label: str) -> dict:
    """A document from model/outcomes.py counts (request, errno, site) -> n, as a campaign
    records them; `label` stands for the test that reached each site."""
    from conformance.report import ioctl_name

    doc = empty()
    doc["outcomes"][target] = _tally((ioctl_name(request), e, n) for (request, e, _), n in counts.items())
    doc["sites"] = {site: [label] for (_, _, site) in counts if site}
    return doc


def merge(a: dict, b: dict) -> dict:
    out = empty()
    for doc in (a, b):
        for target, per in doc.get("outcomes", {}).items():
            mine = out["outcomes"].setdefault(target, {})
            for ioctl, counts in per.items():
                m = mine.setdefault(ioctl, {})
                for k, n in counts.items():
                    m[k] = m.get(k, 0) + n
        for target, tests in doc.get("passed", {}).items():
            out["passed"][target] = sorted(set(out["passed"].get(target, [])) | set(tests))
        for site, tests in doc.get("sites", {}).items():
            out["sites"][site] = sorted(set(out["sites"].get(site, [])) | set(tests))
    return out


def write(path: str | Path, doc: dict) -> dict:
    """Write `doc` to `path`, merged with what is there already; returns what was written."""
    p = Path(path)
    if p.exists():
        doc = merge(json.loads(p.read_text()), doc)
    p.write_text(json.dumps(doc, indent=1, sort_keys=True))
    return doc


UNREACHABLE = Path(__file__).with_name("coverage_unreachable.json")


def unreachable(path: str | Path = UNREACHABLE) -> dict[str, dict]:
    """The sites listed as not reachable from user space: stable name -> {"kind", "reason", ...}."""
    return json.loads(Path(path).read_text())["sites"]


def summary(doc: dict, listed: dict[str, dict] | None = None) -> dict:
    """The figures: every raise site of the model's source (`sites`), those listed unreachable
    (`listed`, from coverage_unreachable.json unless given), the rest (`reachable`), those of
    them a test reached (`reached`) and those reached by a test that also passed on a kernel
    target in this document (`confirmed`); the reachable sites not reached (`unreached`), the
    listed ones reached all the same (`listed_but_reached`) and the listed names that match no
    raise site (`unknown_listed`)."""
    from model.outcomes import raise_site_names, raise_sites

    every = raise_sites()
    names = raise_site_names()
    listed = unreachable() if listed is None else listed
    site_of = {name: site for site, name in names.items()}
    out_of_reach = {site_of[n] for n in listed if n in site_of}
    reachable = set(every) - out_of_reach
    kernel_passed = {t for target, tests in doc["passed"].items() if _is_kernel(target) for t in tests}
    ran = {s for s in doc["sites"] if s in every}
    reached = ran & reachable
    confirmed = {s for s in reached if kernel_passed & set(doc["sites"][s])}
    kinds: dict[str, int] = defaultdict(int)
    for n in listed:
        if n in site_of:
            kinds[listed[n].get("kind", "?")] += 1
    return {"sites": len(every), "listed": len(out_of_reach), "reachable": len(reachable),
            "reached": len(reached), "confirmed": len(confirmed), "kernel_run": bool(kernel_passed),
            "unreached": sorted(reachable - reached), "listed_but_reached": sorted(ran & out_of_reach),
            "unknown_listed": sorted(n for n in listed if n not in site_of),
            "listed_by_kind": dict(sorted(kinds.items())), "errno_of": every, "names": names}


def render(doc: dict, unreached_lines: int = 40) -> str:
    lines = ["outcomes witnessed per ioctl (success or errno, by target):"]
    targets = sorted(doc["outcomes"])
    ioctls = sorted({i for t in targets for i in doc["outcomes"][t]})
    w = max((len(i) for i in ioctls), default=0)
    for i in ioctls:
        parts = []
        for t in targets:
            got = doc["outcomes"][t].get(i)
            if got:
                parts.append(f"{t}: " + " ".join(sorted(got, key=lambda k: (k != "success", k))))
        lines.append(f"  {i:<{w}}  " + " | ".join(parts))
    if not any(t.startswith("model") or t == "served" for t in targets) and not doc["sites"]:
        return "\n".join(lines)
    s = summary(doc)
    conf = (f", {s['confirmed']} by a test that also passed on the kernel" if s["kernel_run"]
            else " (no kernel target in this document: none confirmed)")
    kinds = ", ".join(f"{n} {k}" for k, n in s["listed_by_kind"].items())
    lines.append(f"model raise sites reached: {s['reached']} of {s['reachable']} reachable{conf}")
    lines.append(f"  ({s['sites']} in the model's source, {s['listed']} listed unreachable in "
                 f"conformance/{UNREACHABLE.name}: {kinds})")
    if s["listed_but_reached"]:
        lines.append(f"LISTED UNREACHABLE BUT REACHED ({len(s['listed_but_reached'])}): take them off the list")
        for site in s["listed_but_reached"]:
            lines.append(f"  {site}  [{s['names'][site]}]")
    if s["unknown_listed"]:
        lines.append(f"LISTED BUT NO SUCH RAISE SITE ({len(s['unknown_listed'])}): the list is stale")
        for name in s["unknown_listed"]:
            lines.append(f"  {name}")
    if s["unreached"]:
        lines.append(f"reachable, not reached ({len(s['unreached'])}):")
        for site in s["unreached"][:unreached_lines]:
            lines.append(f"  {site} {s['errno_of'][site]}")
        if len(s["unreached"]) > unreached_lines:
            lines.append(f"  ... and {len(s['unreached']) - unreached_lines} more (summary(doc)['unreached'] "
                         "lists every one)")
    return "\n".join(lines)
