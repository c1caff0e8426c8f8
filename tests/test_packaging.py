"""The package imports without torch or TensorFlow (the parity extra is for tests only)."""
import pkgutil
import subprocess
import sys

import tta_jax

BLOCK = ("import sys\n"
         "class _Block:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name.split('.')[0] in ('torch', 'tensorflow', 'diffusers'):\n"
         "            raise ImportError('blocked for this test: ' + name)\n"
         "sys.meta_path.insert(0, _Block())\n")


def _modules():
    """Every tta_jax module except converters' optional torch paths (they import torch lazily)."""
    names = ["tta_jax"]
    for m in pkgutil.walk_packages(tta_jax.__path__, "tta_jax."):
        names.append(m.name)
    return names


def test_import_without_torch_or_tensorflow():
    code = BLOCK + "import importlib\n" + "".join(f"importlib.import_module({n!r})\n" for n in _modules())
    code += "assert 'torch' not in sys.modules and 'tensorflow' not in sys.modules\nprint('ok')\n"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-3000:]
