"""What a labeling run imports: seconds of every `alexlabel label` start are modules it never uses."""
import re
import subprocess
import sys

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
