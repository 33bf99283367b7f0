"""Generate the MLPerfRun and MLPerfCampaign CustomResourceDefinitions from the pydantic models.

``python -m mlperf_operator.crd`` (``make crds``) writes ``crds/``; a test fails when the files
and the models drift. The pydantic JSON schema is turned into a Kubernetes structural schema
(no $ref, no anyOf, OpenAPI v3.0 bounds), and the suite tables add the CEL admission rules.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path
from typing import Any

import yaml
from mlperf_harness.spec import MLPerfRunSpec, category_message
from mlperf_harness.suites import all_suites
from pydantic import BaseModel

from .api import CAMPAIGN_KIND, CAMPAIGN_PLURAL, GROUP, KIND, PLURAL, VERSION
from .campaign import MATRIX_FIELDS, MLPerfCampaignSpec, MLPerfCampaignStatus
from .status import MLPerfRunStatus

REPO = Path(__file__).resolve().parents[2]


def crd_paths(plural: str) -> tuple[Path, Path]:
    """Where a CRD is written: crds/ and the chart's copy (one source, written together, checked together)."""
    name = f"{plural}.{GROUP}.yaml"
    return REPO / "crds" / name, REPO / "helm" / "mlperf-operator" / "crds" / name


CRD_PATH = crd_paths(PLURAL)[0]

_DROP = {"title", "additionalProperties", "$defs"}
CEL = "x-kubernetes-validations"


def structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema node as a Kubernetes structural schema node."""
    node = dict(schema)
    if "$ref" in node:
        target = copy.deepcopy(defs[node.pop("$ref").split("/")[-1]])
        rules = target.get(CEL, []) + node.get(CEL, [])  # the model's rules and the field's
        node = {**target, **node}  # the field's own description wins over the model's docstring
        if rules:
            node[CEL] = rules
    if "anyOf" in node:  # Optional[X]: the field may be omitted, never null
        options = [o for o in node.pop("anyOf") if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {schema}")
        node = {**structural(options[0], defs), **node}
    if node.get("default", "") is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if isinstance(node.get(bound), int | float) and not isinstance(node.get(bound), bool):
            node[plain], node[bound] = node[bound], True
    extra = node.get("additionalProperties")
    if node.get("type") == "object" and extra is True and "properties" not in node:
        node["x-kubernetes-preserve-unknown-fields"] = True
    if "properties" in node:
        node["properties"] = {k: structural(v, defs) for k, v in node["properties"].items()}
    if "items" in node:
        node["items"] = structural(node["items"], defs)
    out = {k: v for k, v in node.items() if k not in _DROP}
    if isinstance(extra, dict):  # a map such as dict[str, str]
        out["additionalProperties"] = structural(extra, defs)
    return out


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}))


def _quoted(items: list[str]) -> str:
    return "[" + ", ".join(f"'{i}'" for i in items) + "]"


def suite_rules() -> list[dict[str, str]]:
    """CEL rules that keep a manifest inside its suite's table."""
    rules: list[dict[str, str]] = []
    high_accuracy: list[str] = []
    for suite in all_suites():
        names = list(suite.benchmarks)
        rules.append(
            {
                "rule": f"self.suite != '{suite.name}' || self.benchmark in {_quoted(names)}",
                "messageExpression": f"'spec.benchmark: ' + self.benchmark + ' is not part of suite "
                f"{suite.name} (it has: {', '.join(names)})'",
                "fieldPath": ".benchmark",
                "reason": "FieldValueInvalid",
            }
        )
        for bench, rule in suite.benchmarks.items():
            for category, allowed in rule.scenarios.items():
                where = f"self.suite == '{suite.name}' && self.benchmark == '{bench}' && self.category == '{category}'"
                if not allowed:
                    rules.append(
                        {
                            "rule": f"!({where})",
                            "message": category_message(suite.name, bench, category),
                            "fieldPath": ".category",
                            "reason": "FieldValueInvalid",
                        }
                    )
                    continue
                rules.append(
                    {
                        "rule": f"!({where}) || self.scenarios.all(s, s in {_quoted(list(allowed))})",
                        "message": f"spec.scenarios: {bench} ({category}) in suite {suite.name} allows only "
                        f"{', '.join(allowed) or 'no scenario'}",
                        "fieldPath": ".scenarios",
                        "reason": "FieldValueInvalid",
                    }
                )
                if rule.allows_high_accuracy(category):
                    high_accuracy.append(f"{suite.name}/{bench}/{category}")
    rules.append(
        {
            "rule": "self.configVer != 'high_accuracy' || "
            f"(self.suite + '/' + self.benchmark + '/' + self.category) in {_quoted(high_accuracy)}",
            "message": "spec.configVer: high_accuracy exists only for "
            + ", ".join(high_accuracy)
            + " (suite/benchmark/category); use configVer: default",
            "fieldPath": ".configVer",
            "reason": "FieldValueInvalid",
        }
    )
    return rules


PRINTER_COLUMNS = [
    {"name": "Benchmark", "type": "string", "jsonPath": ".spec.benchmark"},
    {"name": "Scenarios", "type": "string", "jsonPath": ".status.scenarioList"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Result", "type": "string", "jsonPath": ".status.result"},
    {"name": "Samples/s", "type": "number", "jsonPath": ".status.samplesPerSecond"},
    {"name": "Synthetic", "type": "boolean", "jsonPath": ".status.synthetic", "priority": 1},
    {"name": "Backend", "type": "string", "jsonPath": ".spec.backend", "priority": 1},
    {"name": "GPU", "type": "string", "jsonPath": ".spec.system.gpuProduct", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


CAMPAIGN_COLUMNS = [
    {"name": "Points", "type": "integer", "jsonPath": ".status.pointCount"},
    {"name": "Succeeded", "type": "integer", "jsonPath": ".status.succeeded"},
    {"name": "Failed", "type": "integer", "jsonPath": ".status.failed"},
    {"name": "Running", "type": "integer", "jsonPath": ".status.running"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Suite", "type": "string", "jsonPath": ".spec.template.suite", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def run_spec_schema() -> dict[str, Any]:
    spec = model_schema(MLPerfRunSpec)
    spec[CEL] = spec.get(CEL, []) + suite_rules()
    return spec


def template_schema() -> dict[str, Any]:
    """A campaign's run template: the run spec's schema without the fields the matrix sets, none of them
    required here, and without the rules that relate those fields (each point's run is checked whole)."""
    run = model_schema(MLPerfRunSpec)
    return {
        "type": "object",
        "description": MLPerfCampaignSpec.model_fields["template"].description,
        "properties": {k: v for k, v in run["properties"].items() if k not in MATRIX_FIELDS},
    }


def _definition(
    kind: str, plural: str, short: str, description: str, spec: dict[str, Any], status: dict[str, Any], columns: list
) -> dict[str, Any]:
    root = {
        "type": "object",
        "description": description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": f"API version: {GROUP}/{VERSION}."},
            "kind": {"type": "string", "description": f"{kind}."},
            "metadata": {"type": "object"},
            "spec": spec,
            "status": status,
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}", "labels": {"app.kubernetes.io/part-of": "mlperf-operator"}},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "plural": plural,
                "singular": kind.lower(),
                "listKind": f"{kind}List",
                "shortNames": [short],
                "categories": ["mlperf"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def crd(kind: str = KIND) -> dict[str, Any]:
    if kind == CAMPAIGN_KIND:
        spec = model_schema(MLPerfCampaignSpec)
        spec["properties"]["template"] = template_schema()
        return _definition(
            CAMPAIGN_KIND,
            CAMPAIGN_PLURAL,
            "mlpc",
            "A submission campaign: one MLPerfRun for every point of a matrix of benchmarks, scenarios, "
            "accuracy levels and systems, made from one run template.",
            spec,
            model_schema(MLPerfCampaignStatus),
            CAMPAIGN_COLUMNS,
        )
    return _definition(
        KIND,
        PLURAL,
        "mlpr",
        "An MLPerf Inference run: one benchmark's scenarios, test modes and audits, run as a pipeline of Jobs.",
        run_spec_schema(),
        model_schema(MLPerfRunStatus),
        PRINTER_COLUMNS,
    )


KINDS = {KIND: PLURAL, CAMPAIGN_KIND: CAMPAIGN_PLURAL}
HEADER = "# Generated by `make crds` from the pydantic models (mlperf_operator.crd). Do not edit.\n"


def render(kind: str = KIND) -> str:
    return HEADER + yaml.safe_dump(crd(kind), sort_keys=False, width=100)


def main() -> None:
    written = {path: render(kind) for kind, plural in KINDS.items() for path in crd_paths(plural)}
    if "--check" in sys.argv:
        stale = [str(p) for p, text in written.items() if not p.exists() or p.read_text() != text]
        if stale:
            sys.exit(f"{', '.join(stale)} out of date: run `make crds`")
        return
    for path, text in written.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(path)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
