from setuptools import find_packages, setup

setup(
    name="compressai-lora",
    version="0.1.0",
    description=(
        "Dynamic low-rank instance adaptation (Lv et al., ACM MM 2023) "
        "as drop-in CompressAI models"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["compressai_lora", "compressai_lora.*"]),
    python_requires=">=3.9",
    install_requires=[
        "compressai>=1.2.8,<1.3",
        "torch",
        "torchvision",
        "pytorch-msssim",
        "tqdm",
        "matplotlib",
        "psutil",
        "scipy",
    ],
    extras_require={"test": ["pytest"], "dev": ["pytest", "ruff"]},
    entry_points={
        "console_scripts": [
            "compressai-lora = compressai_lora.utils.codec.__main__:console_main",
        ],
    },
)
