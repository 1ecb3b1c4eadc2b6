"""alexlabel: train AlexNet image classifiers, then label whole image buckets with them."""
__version__ = "0.1.0"
