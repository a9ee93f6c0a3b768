"""python -m seg_gan.bench <name> [options]; `python -m seg_gan.bench --help` lists the benchmarks."""

import argparse

from seg_gan.bench import data, gpu, inference, ops, semi, step

BENCHMARKS = {"data": data, "gpu": gpu, "inference": inference, "ops": ops, "semi": semi, "step": step}


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m seg_gan.bench", description=__doc__)
    names = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name, module in BENCHMARKS.items():
        module.add_arguments(names.add_parser(name, help=module.__doc__.splitlines()[0]))
    options = parser.parse_args(args)
    BENCHMARKS[options.name].run(options)


if __name__ == "__main__":
    main()
