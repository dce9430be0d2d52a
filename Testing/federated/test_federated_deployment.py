"""A real Flower deployment on 127.0.0.1: SuperLink with TLS and SuperNode authentication,
one SuperNode per site reading its cohort from its node config, tasks submitted with
``flwr run``. The pooled numbers must equal a central evaluation of the same cases.

Every process is started by :class:`LocalFederation` and stopped by it, also on failure;
every wait has a time-out.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated import SiteSpec, load_cohort, reliability
from CalibSegLib.federated.credentials import create_certificates
from CalibSegLib.federated.local import LocalFederation

pytestmark = pytest.mark.slow

N_BINS = 10
#: Three sites, one case each, written to each site's own cohort folder (see ``sites``);
#: site-2's and site-3's images are on a coarser grid (fewer voxels).
SAMPLES = [SiteSpec("site-1", seeds=(100,)), SiteSpec("site-2", seeds=(110,), resolution_mm=8.0),
           SiteSpec("site-3", seeds=(140,), resolution_mm=8.0)]
NAMES = ",".join(s.name for s in SAMPLES)
RUN_TIMEOUT = 400.0


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    from CalibSegLib.models.testing import tiny_model

    folder = tiny_model(str(tmp_path_factory.mktemp("deploy-model") / "tiny"), head="linear",
                        seed=0)
    # free files of a model folder that a derived model must keep
    with open(os.path.join(folder, "training_command.txt"), "w", encoding="utf-8") as fh:
        fh.write("calibseg train --sample mni-t1\n")
    os.makedirs(os.path.join(folder, "gallery"))
    np.savez(os.path.join(folder, "gallery", "proto_000.npz"), crop=np.zeros((2, 2, 2)))
    return folder


@pytest.fixture(scope="module")
def model(model_folder):
    from CalibSegLib.models import load_model

    return load_model(model_folder)


@pytest.fixture(scope="module")
def sites(model, tmp_path_factory) -> list[SiteSpec]:
    """One cohort folder per site (NIfTI image/label pairs), as a hospital's SuperNode reads it."""
    from CalibSegLib.io import write_image

    specs = []
    for sample in SAMPLES:
        folder = tmp_path_factory.mktemp(f"cohort-{sample.name}")
        for case in load_cohort(sample, model_spacing_mm=model.card.spacing_mm):
            write_image(str(folder / f"{case.case_id}_image.nii.gz"), case.image, case.affine)
            write_image(str(folder / f"{case.case_id}_labels.nii.gz"), case.labels, case.affine)
        specs.append(SiteSpec(sample.name, folder=str(folder)))
    return specs


@pytest.fixture(scope="module")
def federation(sites, tmp_path_factory):
    with LocalFederation(str(tmp_path_factory.mktemp("federation")), sites,
                         timeout=180.0) as fed:
        yield fed


@pytest.fixture(scope="module")
def central_cases(sites, model):
    return [case for spec in sites
            for case in load_cohort(spec, model_spacing_mm=model.card.spacing_mm)]


#: The central evaluation of every site's cases together, run as its own process: like the
#: SuperNodes' ClientApps, a fresh process with torch's default thread count (a test that
#: changed this process's thread count cannot change the reference).
CENTRAL = """
import json, sys
import numpy as np
from CalibSegLib.cohort import evaluate_cohort, fit_cohort_temperature
from CalibSegLib.federated import SiteSpec, load_cohort, server
from CalibSegLib.models import load_model
model_folder, n_bins, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
model = load_model(model_folder)
sites = [SiteSpec(**spec) for spec in json.loads(sys.argv[4])]
cases = [c for s in sites for c in load_cohort(s, model_spacing_mm=model.card.spacing_mm)]
stats, _ = evaluate_cohort(model, cases, n_bins=n_bins, device="cpu")
np.savez(out + ".npz", **{k: np.asarray(v) for k, v in stats.to_arrays().items()})
t, info = fit_cohort_temperature(model, cases, grid=server.DEFAULT_TEMPERATURES, device="cpu")
json.dump({"temperature": t, **info}, open(out + ".json", "w"))
"""


@pytest.fixture(scope="module")
def central(sites, model_folder, tmp_path_factory):
    """``(ReliabilityStats, temperature, info)`` of the central evaluation of all cases."""
    import subprocess
    import sys

    from CalibSegLib.calibration import ReliabilityStats

    out = str(tmp_path_factory.mktemp("central") / "central")
    specs = [{"name": s.name, "folder": s.folder} for s in sites]
    subprocess.run([sys.executable, "-c", CENTRAL, model_folder, str(N_BINS), out,
                    json.dumps(specs)], check=True, timeout=RUN_TIMEOUT)
    info = json.loads(open(out + ".json", encoding="utf-8").read())
    stats = ReliabilityStats.from_arrays(dict(np.load(out + ".npz")))
    return stats, info.pop("temperature"), info


def _run(fed: LocalFederation, **config):
    result = fed.run(config, timeout=RUN_TIMEOUT)
    assert result.ok, f"{result.status} {result.details}\n{result.log[-3000:]}"
    return result


@pytest.fixture(scope="module")
def evaluation(federation, model_folder, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("deploy-eval") / "report")
    result = _run(federation, task="evaluate", model=model_folder, output=out, **{
        "min-sites": 3, "n-bins": N_BINS, "sites": NAMES, "timeout": 240.0})
    return result, out


def test_deployment_runs_with_tls_and_registered_nodes(federation):
    plan = federation.plan
    command = plan.superlink_command()
    assert "--enable-supernode-auth" in command and "--insecure" not in command
    assert "--ssl-certfile" in command
    for site in plan.sites:
        node = plan.supernode_command(site)
        assert "--root-certificates" in node and "--auth-supernode-private-key" in node
        assert "--insecure" not in node
    assert set(federation.node_ids) == {"site-1", "site-2", "site-3"}


def test_deployed_evaluation_equals_central(evaluation, central):
    from CalibSegLib.calibration import ReliabilityStats

    run, out = evaluation
    assert "calibseg: pooled over 3 site(s)" in run.log
    summary = json.loads(open(os.path.join(out, "summary.json"), encoding="utf-8").read())
    assert {o["site"]: o["status"] for o in summary["outcomes"]} == {
        "site-1": "ok", "site-2": "ok", "site-3": "ok"}
    fed = ReliabilityStats.from_arrays(dict(np.load(os.path.join(out, "pooled_statistics.npz"))))
    a, b = fed.to_arrays(), central[0].to_arrays()
    numeric = [k for k in b if np.asarray(b[k]).dtype.kind in "biuf"]
    assert numeric and set(numeric) <= set(a)
    for key in numeric:
        x, y = np.asarray(a[key]), np.asarray(b[key])
        assert x.shape == y.shape, key
        if y.dtype.kind in "biu":
            np.testing.assert_array_equal(x, y, err_msg=key)
        else:
            np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-12, err_msg=key)
    pooled = reliability.summary_metrics(central[0])
    for key in ("ace", "ece", "mce", "mean_dice"):
        assert summary["pooled"][key] == pytest.approx(pooled[key], rel=1e-12, abs=1e-15)


def test_deployed_wire_bytes_are_bounded_statistics(evaluation, model, central_cases):
    run, out = evaluation
    summary = json.loads(open(os.path.join(out, "summary.json"), encoding="utf-8").read())
    sizes = {o["site"]: o["nbytes"] for o in summary["outcomes"]}
    # one case each, images of different sizes: the same bytes
    assert [c.labels.size for c in central_cases][0] > 4 * central_cases[1].labels.size
    assert sizes["site-1"] == sizes["site-2"] == sizes["site-3"] > 0
    # 8 bytes per value at most, plus names, dtypes and shapes of each array and the meta record
    values = reliability.payload_bound(model.num_classes, N_BINS, 1)
    arrays = len(reliability.wire_schema(model.num_classes, N_BINS))
    assert sizes["site-1"] <= 8 * values + 128 * arrays + 1024
    # everything the SuperLink received in the run (replies, logs, status) is far below
    # one image's voxels
    assert 0 < run.inbound_bytes < central_cases[0].labels.size


def test_deployed_temperature_equals_central(federation, model, model_folder, central,
                                             tmp_path):
    from CalibSegLib.models import load_model

    out = str(tmp_path / "calibrated")
    _run(federation, task="calibrate", model=model_folder, output=out,
         **{"min-sites": 3, "sites": NAMES, "timeout": 240.0})
    fitted = load_model(out)
    record = json.loads(open(os.path.join(out, "federated_temperature.json"),
                             encoding="utf-8").read())
    _, t_central, info = central
    assert fitted.temperature == record["temperature"] == t_central
    assert record["voxel_count"] == info["voxels"]
    assert min(record["mean_nll"]) == pytest.approx(info["nll_at_fitted_grid_point"], rel=1e-12)
    # a complete, new model folder
    assert fitted.card.name == f"{model.card.name}-calibrated"
    assert fitted.card.version != model.card.version
    assert fitted.card.training["derived_from"]["version"] == model.card.version
    for name in ("training_command.txt", os.path.join("gallery", "proto_000.npz")):
        assert os.path.exists(os.path.join(out, name)), name


def test_unregistered_supernode_is_refused(federation):
    federation.add_site(SiteSpec("site-x", seeds=(120,)), register=False)
    proc = federation.start_site("site-x", max_wait_s=15.0)
    assert proc.wait(timeout=120.0) != 0
    assert "Failed to activate SuperNode" in federation.process_log("supernode-site-x")
    assert "No SuperNode found with the given public key" in federation.process_log("superlink")
    assert "site-x" not in federation.node_ids


def test_supernode_not_trusting_the_superlink_cannot_connect(federation, tmp_path):
    other = create_certificates(str(tmp_path / "other-ca"))
    federation.add_site(SiteSpec("site-y", seeds=(130,)), register=True)
    proc = federation.start_site("site-y", credentials=os.path.dirname(other.ca_certificate),
                                 max_wait_s=10.0)
    with pytest.raises(CalibSegError, match="site-y"):
        federation.wait_online(["site-y"], timeout=120.0)
    assert proc.wait(timeout=120.0) != 0
    assert "CERTIFICATE_VERIFY_FAILED" in federation.process_log("supernode-site-y")


def test_supernode_killed_mid_round_is_named_and_round_completes(federation, model_folder,
                                                                  tmp_path):
    out = str(tmp_path / "report")
    run_id = federation.submit({"task": "evaluate", "model": model_folder, "output": out,
                                "min-sites": 2, "n-bins": N_BINS, "sites": NAMES,
                                "timeout": 90.0})
    end = time.monotonic() + RUN_TIMEOUT
    while "Receiving: query.calibseg_stats" not in federation.process_log("supernode-site-2"):
        assert time.monotonic() < end, "site-2 never received the round's request"
        time.sleep(0.2)
    federation.stop_site("site-2")
    result = federation.wait_run(run_id, timeout=RUN_TIMEOUT)
    assert result.ok, f"{result.status} {result.details}\n{result.log[-3000:]}"
    summary = json.loads(open(os.path.join(out, "summary.json"), encoding="utf-8").read())
    status = {o["site"]: o["status"] for o in summary["outcomes"]}
    assert status["site-1"] == status["site-3"] == "ok"
    assert status["site-2"] in ("dropped", "error")
    assert sorted(summary["sites"]) == ["site-1", "site-3"]
    assert "not pooled: site-2" in result.log


def test_cli_local_federation_first_look(model_folder, tmp_path, capfd):
    from CalibSegLib.cli import main
    from CalibSegLib.federated.local import _descendants

    def flower_processes() -> set[int]:
        found = set()
        for pid in _descendants(os.getpid()):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    command = fh.read()
            except OSError:
                continue
            if b"flower-" in command or b"flwr" in command:
                found.add(pid)
        return found

    before = flower_processes()
    out = tmp_path / "report"
    assert main(["federated", "local", "evaluate", "--model", model_folder, "--sites", "1",
                 "--bins", str(N_BINS), "-o", str(out), "--workdir", str(tmp_path / "work"),
                 "--timeout", str(RUN_TIMEOUT), "-q"]) == 0
    stdout, stderr = capfd.readouterr()
    lines = stdout.strip().splitlines()  # -q: the summary line only
    assert len(lines) == 1 and lines[0].startswith("pooled over 1 site(s): ace ")
    assert "\x1b[" not in stdout
    assert json.loads((out / "summary.json").read_text())["outcomes"][0]["status"] == "ok"
    # every Flower process the command started is gone
    assert flower_processes() <= before
