"""Federated evaluation, temperature fitting and fine-tuning across simulated sites (Flower)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import (
    SiteSpec,
    federated_calibrate,
    federated_evaluate,
    federated_finetune,
    load_cohort,
    reliability,
    simulated_sites,
    site,
)
from CalibSegLib.federated.drift import calibration_drift

N_BINS = 10


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from CalibSegLib.models.testing import tiny_model

    return tiny_model(str(tmp_path_factory.mktemp("fed") / "tiny"), head="linear", seed=0)


@pytest.fixture(scope="module")
def model(model_folder):
    from CalibSegLib.models import load_model

    return load_model(model_folder)


@pytest.fixture(scope="module")
def sites():
    return simulated_sites(3, 1)  # sample cohorts on the model's own grid


@pytest.fixture(scope="module")
def evaluation(model, sites):
    return federated_evaluate(model, sites, n_bins=N_BINS, min_sites=3, plots=False)


def _cases(model, spec):
    return load_cohort(spec, model_spacing_mm=model.card.spacing_mm)


def _central(model, sites):
    merged = None
    for spec in sites:
        s = site.site_statistics(model, _cases(model, spec), spec.name, N_BINS)
        merged = s if merged is None else merged.merge(s)
    return merged


def test_pooled_federated_statistics_equal_central(evaluation, model, sites):
    result, _ = evaluation
    assert [o.status for o in result.outcomes] == ["ok"] * 3
    fed, central = result.pooled.to_arrays(), _central(model, sites).to_arrays()
    assert set(fed) == set(central)
    for key in central:
        a, b = np.asarray(fed[key]), np.asarray(central[key])
        if a.dtype.kind in "iub":
            np.testing.assert_array_equal(a, b)
        elif a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
        else:
            assert [str(x) for x in a] == [str(x) for x in b]
    fed_m, central_m = result.pooled_metrics(), reliability.summary_metrics(
        _central(model, sites))
    for key in central_m:
        assert fed_m[key] == pytest.approx(central_m[key], abs=1e-6)


def test_pooled_numbers_are_those_of_the_pooled_diagram(evaluation):
    result, _ = evaluation
    pooled, diagram = result.pooled_metrics(), result.pooled.diagram_bins()
    assert pooled["mce"] == pytest.approx(diagram.mce, abs=1e-12)
    assert pooled["ece"] == pytest.approx(diagram.ece, abs=1e-12)
    # the mean over cases is a different number and is labelled as one
    per_case = [reliability.summary_metrics(c) for c in reliability.per_case(result.pooled)]
    mean = result.case_mean_metrics()
    assert mean["mce"] == pytest.approx(np.mean([m["mce"] for m in per_case]), abs=1e-12)


def test_payloads_are_bounded_statistics_only(evaluation, model):
    _, grid = evaluation
    voxels = _cases(model, simulated_sites(1)[0])[0].labels.size
    stats_replies = [r for r in grid.received if r.message_type.endswith("calibseg_stats")]
    assert len(stats_replies) == 3
    for r in stats_replies:
        n_cases = int(r.content["meta"]["n-cases"])
        bound = reliability.payload_bound(model.num_classes, N_BINS, n_cases)
        assert set(r.content.array_records) == {"stats"}
        assert not r.content.metric_records
        arrays = {k: r.content["stats"][k].numpy() for k in r.content["stats"]}
        assert set(arrays) == set(reliability.wire_schema(model.num_classes, N_BINS))
        assert sum(a.size for a in arrays.values()) <= bound < voxels // 10
        assert all(a.size < voxels // 10 for a in arrays.values())
        assert set(r.content["meta"]) == {"site", "model-version", "n-cases", "n-bins",
                                         "n-classes"}


def test_federated_temperature_equals_central(model, sites, tmp_path):
    from CalibSegLib.calibration import fit_temperature_from_grid, nll_over_temperature_grid

    temps = tuple(np.round(np.linspace(0.5, 3.0, 26), 3))
    result, _ = federated_calibrate(model, sites, temperatures=temps, min_sites=3,
                                    output_model=str(tmp_path / "calibrated"))
    logits, labels = [], []
    for spec in sites:
        for case in _cases(model, spec):
            logits.append(site.case_prediction(model, case).logits.reshape(
                model.num_classes, -1))
            labels.append(case.labels.reshape(-1))
    sums, count = nll_over_temperature_grid(np.concatenate(logits, 1), np.concatenate(labels),
                                            np.asarray(temps))
    assert result.voxel_count == count
    # equal up to the rounding of summing the same NLL terms in another order
    assert result.temperature == pytest.approx(fit_temperature_from_grid(sums, np.asarray(temps)),
                                               rel=1e-9)
    np.testing.assert_allclose(result.nll_sums, sums, rtol=1e-6)
    from CalibSegLib.models import load_model

    assert load_model(str(tmp_path / "calibrated")).temperature == result.temperature


def _nan_payload(content):
    arrays = content["stats"]
    key = sorted(arrays)[0]
    from flwr.app import Array

    bad = arrays[key].numpy().astype(np.float64).copy()
    bad.flat[0] = np.nan
    arrays[key] = Array.from_numpy_ndarray(bad)
    return content


def _negative_payload(content):
    from flwr.app import Array

    key = next(k for k in content["stats"] if "count" in k)
    bad = content["stats"][key].numpy().copy()
    bad.flat[0] = -5
    content["stats"][key] = Array.from_numpy_ndarray(bad)
    return content


def _wrong_shape_payload(content):
    from flwr.app import Array

    key = sorted(content["stats"])[0]
    content["stats"][key] = Array.from_numpy_ndarray(np.zeros(7))
    return content


def test_malformed_payloads_are_rejected_and_do_not_poison_the_pool(model, sites, caplog):
    caplog.set_level("WARNING", logger="CalibSegLib.federated")
    result, _ = federated_evaluate(model, sites, n_bins=N_BINS, min_sites=1, plots=False,
                                   faults={"site-2": _nan_payload, "site-3": _wrong_shape_payload})
    status = {o.site: (o.status, o.reason) for o in result.outcomes}
    assert status["site-1"][0] == "ok"
    for name, word in (("site-2", "NaN"), ("site-3", "shape")):
        assert status[name][0] == "rejected" and word in status[name][1]
        assert any(name in r.getMessage() and word in r.getMessage() for r in caplog.records)
    clean = _central(model, sites[:1]).to_arrays()
    pooled = result.pooled.to_arrays()
    for key in clean:
        if np.asarray(clean[key]).dtype.kind in "biuf":
            np.testing.assert_allclose(pooled[key], clean[key], rtol=1e-6, atol=1e-6)


def test_negative_counts_and_sums_above_counts_are_rejected(model):
    from flwr.app import RecordDict

    from CalibSegLib.federated.protocol import PayloadRejected

    stats = site.site_statistics(model, _cases(model, simulated_sites(1)[0]), "site-1", N_BINS)
    arrays = reliability.encode_stats(stats)
    reliability.decode_stats(dict(arrays), site="site-1", n_cases=1,
                             n_classes=model.num_classes, n_bins=N_BINS)
    from flwr.app import Array, ArrayRecord

    content = RecordDict({"stats": ArrayRecord({k: Array.from_numpy_ndarray(v)
                                                for k, v in arrays.items()})})
    bad = {k: content["stats"][k].numpy() for k in _negative_payload(content)["stats"]}
    with pytest.raises(PayloadRejected, match="negative"):
        reliability.decode_stats(bad, site="site-1", n_cases=1, n_classes=model.num_classes,
                                 n_bins=N_BINS)
    with pytest.raises(PayloadRejected, match="shape"):
        reliability.decode_stats(dict(arrays), site="site-1", n_cases=2,
                                 n_classes=model.num_classes, n_bins=N_BINS)


def test_site_dropping_out_mid_round_is_named_and_round_completes(model, sites, tmp_path):
    result, _ = federated_evaluate(model, sites, n_bins=N_BINS, min_sites=2,
                                   faults={"site-2": "drop"}, output=str(tmp_path / "r"),
                                   plots=False)
    status = {o.site: o.status for o in result.outcomes}
    assert status == {"site-1": "ok", "site-2": "dropped", "site-3": "ok"}
    assert sorted(result.site_stats) == ["site-1", "site-3"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert {"site": "site-2", "status": "dropped"}.items() <= next(
        o for o in summary["outcomes"] if o["site"] == "site-2").items()
    assert "site-2" in (tmp_path / "r" / "sites.csv").read_text()
    with pytest.raises(CalibSegError, match="site-2: dropped"):
        federated_evaluate(model, sites, n_bins=N_BINS, min_sites=3, plots=False,
                           faults={"site-2": "drop"})


def test_waiting_for_sites_names_who_did_not_connect(sites):
    import time

    from CalibSegLib.federated import server
    from CalibSegLib.federated.simulation import run_federation

    (nodes, missing), _ = run_federation(
        lambda g: server.wait_for_sites(g, 2, 600.0, expected=["site-1", "site-9"]), sites[:2])
    assert len(nodes) == 2 and missing == ["site-9"]
    start = time.monotonic()
    with pytest.raises(CalibSegError, match=r"Only 2 site\(s\) connected.*not connected: site-9"):
        run_federation(lambda g: server.wait_for_sites(g, 3, 600.0, expected=["site-9"]),
                       sites[:2])
    assert time.monotonic() - start < 5.0  # an in-process grid gains no sites: no waiting


def test_site_error_is_reported(model, sites, tmp_path):
    broken = SiteSpec(name="site-x", folder=str(tmp_path / "missing"))
    result, _ = federated_evaluate(model, [*sites[:1], broken], n_bins=N_BINS, min_sites=1,
                                   plots=False)
    status = {o.site: (o.status, o.reason) for o in result.outcomes}
    assert status["site-x"][0] == "error" and "a cohort is a folder" in status["site-x"][1]


def test_drift_rule_flags_a_miscalibrated_site():
    def ace(cases):
        return float(np.mean(cases))

    good = [0.05, 0.06, 0.05, 0.04]
    per_site = {"a": good, "b": good[::-1], "d": good, "e": good,
                "c": [0.20, 0.22, 0.19, 0.21]}
    flags = {f.site: f for f in calibration_drift(per_site, ace, threshold=0.05)}
    assert flags["c"].flagged and flags["c"].p_value < 0.05
    assert not any(flags[s].flagged for s in "abde")
    few = calibration_drift({"a": [0.05], "c": [0.3]}, ace, threshold=0.05)
    assert all(f.flagged for f in few) and "threshold only" in few[0].reason


def test_one_finetuning_round_end_to_end(model_folder, sites, tmp_path):
    from CalibSegLib.models import load_model

    out = str(tmp_path / "finetuned")
    result, grid = federated_finetune(model_folder, sites[:2], output_model=out, rounds=1,
                                      local_steps=1, lr=1e-3, n_bins=N_BINS, min_sites=2)
    new = load_model(out)
    fed = new.card.training["federated"]
    old_card = load_model(model_folder).card
    assert new.card.name == f"{old_card.name}-fed" and fed["rounds"] == 1
    assert new.card.version == "0.2" and old_card.version == "0.1"
    assert new.card.training["derived_from"] == {**new.card.training["derived_from"],
                                                 "name": old_card.name, "version": "0.1"}
    assert [o["site"] for o in fed["sites"]["1"]] == ["site-1", "site-2"]
    assert set(fed["train_metrics"]["1"]) == {"site-1", "site-2"}
    assert fed["pooled_before"] is not None and fed["pooled_after"] is not None
    old = load_model(model_folder)
    changed = any(not np.array_equal(a.numpy(), b.numpy()) for a, b in zip(
        old.network.state_dict().values(), new.network.state_dict().values()))
    assert changed
    train = [r for r in grid.received if r.message_type == "train"]
    assert len(train) == 2 and all(set(r.content.array_records) == {"arrays"} for r in train)


def test_cli_evaluate(model_folder, tmp_path, capfd):
    from CalibSegLib.cli import main

    out = tmp_path / "report"
    assert main(["federated", "evaluate", "--model", model_folder, "--sites", "2",
                 "--bins", str(N_BINS), "-o", str(out), "-q"]) == 0
    stdout, stderr = capfd.readouterr()
    # -q: the summary line only; Flower's log stays quiet and colourless
    assert stdout.splitlines() == [stdout.strip()] and stdout.startswith("pooled over 2 site(s)")
    assert "\x1b[" not in stdout + stderr and "INFO" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["sites"]) == ["site-1", "site-2"]
    assert f"ace {summary['pooled']['ace']:.4f}" in stdout
    assert os.path.exists(out / "sites.csv") and os.path.exists(out / "pooled_statistics.npz")


def test_cli_refuses_an_unmeetable_request_at_once(model_folder, tmp_path, capfd):
    import time

    from CalibSegLib.cli import main

    start = time.monotonic()
    assert main(["federated", "evaluate", "--model", model_folder, "--sites", "1",
                 "--min-sites", "2", "-o", str(tmp_path / "r")]) == 2
    assert time.monotonic() - start < 5.0
    _, stderr = capfd.readouterr()
    assert stderr.strip().splitlines() == [
        "calibseg federated: error: --min-sites 2 cannot be met by 1 site(s); add sites or "
        "lower --min-sites."]
    assert not (tmp_path / "r").exists()


def test_cli_finetune_quiet_prints_one_line(model_folder, tmp_path, capfd):
    from CalibSegLib.cli import main
    from CalibSegLib.models import load_model

    out = tmp_path / "fed"
    assert main(["federated", "finetune", "--model", model_folder, "--sites", "2",
                 "--bins", str(N_BINS), "--local-steps", "1", "-o", str(out), "-q"]) == 0
    stdout, stderr = capfd.readouterr()
    assert stdout.strip().splitlines() == [f"1 FedAvg round(s) at 2 site(s); model {out}"]
    assert stderr.strip() == "" or "\x1b[" not in stderr and "WARNING" not in stderr
    assert load_model(str(out)).card.name.endswith("-fed")


def test_simulated_sites_default_to_the_model_spacing(model, model_folder, tmp_path, capfd):
    from CalibSegLib.cli import main

    spec = simulated_sites(1)[0]
    assert spec.resolution_mm is None
    case = load_cohort(spec, model_spacing_mm=model.card.spacing_mm)[0]
    assert tuple(np.abs(np.diag(case.affine)[:3])) == pytest.approx(model.card.spacing_mm)
    assert main(["federated", "evaluate", "--model", model_folder, "--sites", "1",
                 "--resolution", "8", "--bins", str(N_BINS), "-o", str(tmp_path / "r")]) == 0
    _, stderr = capfd.readouterr()
    assert "warning: simulated sites on a 8 mm grid; the model works at 4x4x4 mm" in stderr


def test_cli_credentials_are_what_flower_reads(tmp_path, capfd):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key
    from flwr.cli.supernode.register import try_load_public_key

    from CalibSegLib.cli import main

    out = tmp_path / "creds"
    assert main(["federated", "credentials", "-o", str(out), "--host", "fl.example.org",
                 "--host", "10.0.0.5", "--site", "north", "--site", "south"]) == 0
    for name in ("ca.key", "server.key", "north.key", "south.key"):
        assert os.stat(out / name).st_mode & 0o077 == 0, name
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    server_cert = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    server_cert.verify_directly_issued_by(ca)
    names = server_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for name in ("north", "south"):
        key = load_ssh_private_key((out / f"{name}.key").read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)  # what flower-supernode requires
        assert try_load_public_key(out / f"{name}.pub")  # what flwr supernode register reads
    capfd.readouterr()
    assert main(["federated", "credentials", "-o", str(out), "--site", "north"]) == 2
    assert "--overwrite" in capfd.readouterr().err


def test_cli_deploy_prints_the_exact_commands(tmp_path, capfd):
    import shlex

    from CalibSegLib.cli import main

    creds = tmp_path / "creds"
    assert main(["federated", "credentials", "-o", str(creds), "--host", "fl.example.org",
                 "--site", "north", "-q"]) == 0
    capfd.readouterr()
    home = tmp_path / "flwr-home"
    assert main(["federated", "deploy", "--host", "fl.example.org", "--credentials", str(creds),
                 "--site", "north=/data/cohort", "--model", "/models/brain", "-o",
                 "/reports/r1", "--min-sites", "1", "--write-flwr-config", str(home)]) == 0
    out = capfd.readouterr().out
    commands = [shlex.split(line) for line in out.splitlines() if not line.startswith("#")]
    by_program = {c[0]: c for c in commands}
    link = by_program["flower-superlink"]
    assert link[link.index("--ssl-certfile") + 1] == str(creds / "server.pem")
    assert "--enable-supernode-auth" in link and "--insecure" not in link
    node = by_program["flower-supernode"]
    assert node[node.index("--superlink") + 1] == "fl.example.org:9093"
    assert node[node.index("--auth-supernode-private-key") + 1] == str(creds / "north.key")
    assert node[node.index("--node-config") + 1] == "site='north' cohort='/data/cohort'"
    register = next(c for c in commands if c[:3] == ["flwr", "supernode", "register"])
    assert register[3] == str(creds / "north.pub") and register[-2:] == ["--name", "north"]
    run = next(c for c in commands if c[:2] == ["flwr", "run"])
    assert "model='/models/brain'" in run[run.index("--run-config") + 1]
    assert 'address = "fl.example.org:9093"' in (home / "config.toml").read_text()


@pytest.mark.parametrize("task", ["evaluate", "calibrate", "finetune"])
def test_existing_output_is_refused_before_any_work_unless_overwrite(tmp_path, capfd, task,
                                                                    monkeypatch):
    """The command line's one rule: an existing output is refused, naming --overwrite."""
    from CalibSegLib.cli import main
    from CalibSegLib.federated import api

    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")

    def no_work(*args, **kwargs):
        raise AssertionError("work started although the output exists")

    monkeypatch.setattr(api, "run_federation", no_work)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    model = os.path.join(repo, "Resources", "Models", "dicece")
    assert main(["federated", task, "--model", model, "-o", str(out),
                 "--sites", "1"]) == 2
    err = capfd.readouterr().err
    assert "already exists" in err and "--overwrite" in err
    assert (out / "keep.txt").read_text() == "mine"
