"""What a labeling run imports: seconds of every `alexlabel label` start are modules it never uses."""
import gc
import json
import re
import subprocess
import sys

from common.collector import paused_while_importing

UNUSED = ("torchvision", "torch._dynamo", "scipy.optimize", "trainer.cli")


def test_a_labeling_run_imports_no_torchvision_dynamo_or_beams_model_manager(checkpoint, sample_dir, tmp_path):
    """torchvision's package imports torch._dynamo (its ops need it); Beam's RunInference module imports its
    ModelManager and scipy.optimize; trainer.cli imports torchvision. The run decodes JPEGs all the same."""
    args = ["label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint, "--output", str(tmp_path)]
    code = ("import sys; from alexlabel.cli import main\n"
            f"try: main({args!r})\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            f"print(sorted(m for m in {UNUSED!r} if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().endswith("[]"), result.stdout
    assert int(re.search(r"labeled (\d+)", result.stdout).group(1)) > 0


def test_torch_and_beam_import_with_the_collector_paused_then_frozen(checkpoint, sample_dir, tmp_path):
    """Their half a million objects are walked by no full collection while they are made, nor at exit (frozen);
    the collector is on again for the run itself."""
    args = ["label", "--input", f"{sample_dir}/bucket/*", "--checkpoint", checkpoint, "--output", str(tmp_path)]
    code = ("import gc, json; from alexlabel.cli import main\n"
            f"try: main({args!r})\n"
            "except SystemExit as e: assert not e.code, e.code\n"
            "print(json.dumps([gc.isenabled(), gc.get_freeze_count(), gc.get_stats()[2]['collections']]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    enabled, frozen, full_collections = json.loads(result.stdout.strip().splitlines()[-1])
    assert enabled
    assert frozen > 200_000, frozen
    assert full_collections <= 1, full_collections


def test_the_collector_comes_back_as_it_was():
    before = gc.get_freeze_count()
    try:
        with paused_while_importing():
            assert not gc.isenabled()
            kept = [[] for _ in range(1000)]
        assert gc.isenabled() and gc.get_freeze_count() >= before + len(kept)
        gc.disable()
        with paused_while_importing():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()
        gc.unfreeze()
