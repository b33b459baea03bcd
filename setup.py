"""pip metadata for mobile_o_ros (the `mobile-o` CLI and the Python package).

The ROS 2 build (interfaces + node executables) is the ament_cmake package in CMakeLists.txt/package.xml,
built by colcon. This file serves `pip install .`: scripts/setup.sh installs the package non-editable and
without deps into .venv so that the `mobile-o` console script exists (see DEVELOPERS.md). Exact pins live
in requirements/*.txt; the ranges here are what the code supports, each end tested: runtime.txt pins the
high ends (the main venv, Python 3.11), py310.txt the low ends (`make test-py310`, Python 3.10).
On a Jetson, onnxruntime comes as the `onnxruntime-gpu` wheel (requirements/jetson.txt, docs/jetson.md):
install this package there with `--no-deps`, or pip adds PyPI's CPU onnxruntime beside it.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def _package_data() -> list[str]:
    """Every non-Python file under mobile_o_ros/ (configs/*.json and any other shipped data)."""
    root = HERE / "mobile_o_ros"
    out = ["configs/*.json"]
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix in {".py", ".pyc", ".so", ".c"} or "__pycache__" in p.parts:
            continue
        rel = p.relative_to(root).as_posix()
        if rel not in out:
            out.append(rel)
    return out


setup(
    name="mobile_o_ros",
    version="0.1.0",
    description="Mobile-O (unified vision-language-diffusion model) served as a ROS 2 component",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").is_file() else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["mobile_o_ros", "mobile_o_ros.*"]),
    package_data={"mobile_o_ros": _package_data()},
    include_package_data=False,
    install_requires=[
        "numpy>=1.26,<3",
        "tokenizers>=0.20,<0.23",
        "opencv-python-headless>=4.10,<6",
        "onnxruntime>=1.20,<1.24",
        "rosbags>=0.11",
        "rosbags-image>=0.10",
        "PyYAML>=6.0.1",
        "psutil>=5.9",
        "tqdm>=4.66",
        "onnx>=1.16",
    ],
    extras_require={
        "export": [
            "torch>=2.5",
            "torchvision>=0.20",
            "transformers==4.57.1",
            "diffusers>=0.35,<0.36",
            "timm>=1.0.20,<1.1",
            "onnx>=1.17,<1.20",
            "safetensors>=0.4",
            "pillow>=10",
        ],
        "dev": ["pytest>=8", "pytest-timeout>=2.3", "ruff>=0.6", "matplotlib>=3.8"],
    },
    entry_points={"console_scripts": ["mobile-o = mobile_o_ros.cli:main"]},
    zip_safe=False,
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
    ],
)
