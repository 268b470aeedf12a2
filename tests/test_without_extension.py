"""Without the compiled extension the package still imports, warns once, and runs on the reference."""
import subprocess
import sys
import textwrap


def test_package_imports_and_warns_once_without_the_extension():
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
            assert tk.available_backends() == ["reference"], tk.available_backends()
            m = tk.LeakyRNN(1, 6)
            out, _ = m(torch.rand(5, 2, 1))
            out.sum().backward()
            m(torch.rand(5, 2, 1))
            out, h_n = tk.leaky_rnn(torch.rand(5, 2, 1), torch.rand(2, 6), torch.rand(6, 1), torch.rand(6, 6),
                                    None, None, torch.full((6,), 2.0), lengths=torch.tensor([2, 5]))
            assert torch.equal(h_n[0], out[1, 0]) and torch.all(out[2:, 0] == 0)
        messages = [str(w.message) for w in caught if "timescale_kernels" in str(w.message)]
        assert any("pip install --no-build-isolation -e ." in m for m in messages), messages
        assert len(messages) == 1 and "C++ CPU kernel is not built" in messages[0], messages
        print("ok", len(messages))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TRITON_INTERPRET": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")
