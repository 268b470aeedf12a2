"""Without the compiled kernel (no prebuilt extension, none cached, no compiler to build one) the
package still imports, warns once at first use, and runs on the reference."""
import subprocess
import sys
import textwrap


def test_package_imports_and_warns_once_without_the_kernel_or_a_compiler(tmp_path):
    script = textwrap.dedent("""
        import sys, warnings
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "timescale_kernels._C":
                    raise ImportError("blocked for this test")
                return None
        sys.meta_path.insert(0, Block())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import timescale_kernels as tk
            import torch
            assert not caught, [str(w.message) for w in caught]  # nothing is looked for at import
            assert tk.available_backends() == ["reference"], tk.available_backends()
            m = tk.LeakyRNN(1, 6)
            out, _ = m(torch.rand(5, 2, 1))
            out.sum().backward()
            m(torch.rand(5, 2, 1))
            out, h_n = tk.leaky_rnn(torch.rand(5, 2, 1), torch.rand(2, 6), torch.rand(6, 1), torch.rand(6, 6),
                                    None, None, torch.full((6,), 2.0), lengths=torch.tensor([2, 5]))
            assert torch.equal(h_n[0], out[1, 0]) and torch.all(out[2:, 0] == 0)
        messages = [str(w.message) for w in caught if "timescale_kernels" in str(w.message)]
        assert len(messages) == 1 and "C++ CPU kernel is not available" in messages[0], messages
        assert "no C++ compiler" in messages[0] and "sudo apt-get install g++" in messages[0], messages
        assert "blocked for this test" in messages[0], messages
        print("ok", len(messages))
    """)
    env = {"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0", "CXX": "/nonexistent/c++",
           "TIMESCALE_KERNELS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
    assert "compiling" not in proc.stderr and not (tmp_path / "cache").exists()


def test_op_models_training_and_simulate_without_the_optional_packages():
    """Where tqdm, scipy and matplotlib are missing (a GPU machine's python with torch, triton and
    pytest only, as `make gpu-check` meets it), the package imports, trains an epoch and simulates:
    progress bars fall back to a silent stand-in, scipy and matplotlib load on first use."""
    script = textwrap.dedent("""
        import importlib.abc, importlib.machinery, sys

        class Missing(importlib.abc.MetaPathFinder, importlib.abc.Loader):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {"tqdm", "scipy", "matplotlib"}:
                    return importlib.machinery.ModuleSpec(name, self)
                return None

            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {spec.name!r}")

            def exec_module(self, module):
                pass

        sys.meta_path.insert(0, Missing())
        import timescale_kernels as tk
        from timescale_kernels.analysis import simulate
        from timescale_kernels.experiments import Trainer, make_config
        from timescale_kernels.models import MemoryNet
        sim = simulate(MemoryNet("leaky", 8, num_heads=1), trials=2, steps=50, burn_in=5, max_lag=3, progress=True)
        trainer = Trainer(make_config("quick", hidden_size=8, batch_size=4, steps_per_epoch=2, test_batches=1, seed=0),
                          progress=True)
        row = trainer.run_epoch()
        try:
            from timescale_kernels.analysis import write_report
        except ModuleNotFoundError as err:
            assert "matplotlib" in str(err), err
        else:
            raise AssertionError("write_report imported without matplotlib")
        print("ok", sim.ac.shape, row["epoch"])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=180,
                          env={"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok (8, 4) 1"), proc.stdout
