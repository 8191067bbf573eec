"""Re-writes a GGUF with every 2-D tensor as Q8_0 (from its dequantized
values) and its metadata copied: a file laid out like llama.cpp's own Q8_0
ones, for benchmarking a Q8_0 model when only another quantization is at
hand (runner/README.md).

    tools/bazel run //runner/bench:to_q8_0 -- IN.gguf OUT.gguf
"""

import os
import sys
from pathlib import Path

import gguf
import numpy as np

from torchchat.atomic import atomic_output


def main(argv):
    if len(argv) != 2:
        sys.exit("usage: to_q8_0 IN.gguf OUT.gguf")
    wd = Path(os.environ.get("BUILD_WORKING_DIRECTORY", "."))
    src, dst = (Path(wd, os.path.expanduser(a)) for a in argv)
    try:
        reader = gguf.GGUFReader(str(src))
    except (OSError, ValueError) as e:
        sys.exit(f"to_q8_0: cannot read {src} as a GGUF: {type(e).__name__}: {e}")
    arch = reader.fields["general.architecture"].contents()
    q8 = gguf.GGMLQuantizationType.Q8_0
    with atomic_output(str(dst)) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        for f in reader.fields.values():
            if f.name == "general.architecture" or f.name.startswith("GGUF."):
                continue  # the writer's own
            sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
            w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
        for t in reader.tensors:
            data = np.asarray(t.data)
            shape = tuple(int(x) for x in reversed(t.shape.tolist()))
            if len(shape) == 2 and t.tensor_type != q8:
                values = gguf.quants.dequantize(data, t.tensor_type).reshape(shape)
                data, kind = gguf.quants.quantize(values.astype(np.float32), q8), q8
            else:
                kind = t.tensor_type
            w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=kind)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    print(f"to_q8_0: wrote {dst}")


if __name__ == "__main__":
    main(sys.argv[1:])
