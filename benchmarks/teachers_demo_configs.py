"""The configs of benchmarks/results/teachers_demo.md: the demo's config in mode async with one teacher,
three teachers (mean, gate) and one teacher with hints (mse, cosine).

    python -m benchmarks.teachers_demo_configs DEMO_DATA_DIR OUT_DIR     # DEMO_DATA_DIR: distill.demo.write_demo_data's
    distill compare OUT_DIR/<name>.yaml --seeds 1 --output OUT_DIR/cmp_<name>
    python -m benchmarks.paired_students OUT_DIR/cmp_mean3 OUT_DIR/cmp_one_pfd   # student − student, paired bootstrap
"""
import copy
import sys
from pathlib import Path

import yaml


def main(data: Path, out: Path) -> None:
    base = yaml.safe_load((data / "config.yaml").read_text())
    base["distillation"]["mode"] = "async"
    teacher = base.pop("teacher")

    def write(name: str, cfg: dict) -> None:
        cfg["output"] = str(out / name)
        (out / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    out.mkdir(parents=True, exist_ok=True)
    one = copy.deepcopy(base) | {"teacher": teacher}
    write("one_pfd", one)
    teachers = {"pfd": teacher, "md": {**teacher, "features": "serving"},
                "lupi": {"model": "dnn", "hidden": [64, 32], "embedding_dim": 16, "features": "privileged"}}
    mean = copy.deepcopy(base) | {"teachers": teachers}
    mean["distillation"]["ensemble"] = {"type": "mean"}
    write("mean3", mean)
    gate = copy.deepcopy(mean)
    gate["distillation"]["ensemble"] = {"type": "gate"}
    write("gate3", gate)
    for loss in ("mse", "cosine"):
        hint = copy.deepcopy(one)
        hint["distillation"]["hint"] = {"weight": 0.1, "loss": loss}
        write(f"hint_{loss}", hint)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
