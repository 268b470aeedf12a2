"""The README's Python examples run as written."""
import re

from conftest import REPO, STUDY_CHECKPOINTS


def test_readme_python_examples_run(study_checkpoints):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks).replace('"../shared/reference_checkpoints/', f'"{STUDY_CHECKPOINTS}/')
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["output"].shape == (100, 256, 500)
    assert namespace["rnn"].tau.grad is not None
    assert namespace["logits"].shape == (1, 256, 2)
