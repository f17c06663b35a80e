"""Classifier: class scores for images from a deploy net (pycaffe's caffe.Classifier)."""
import numpy

from . import io
from .net import TEST
from .pycaffe.net import Net


class Classifier(Net):
    """A TEST-phase Net that takes H x W x K images and returns class scores.

    Args:
        model_file: deploy prototxt whose first input is N x K x H x W.
        pretrained_file: .caffemodel with the trained weights.
        image_dims: (height, width) images are resized to before cropping
            (default: the input's own H x W, so no cropping).
        mean, input_scale, raw_scale, channel_swap: as caffe.io.Transformer.
    """

    def __init__(self, model_file, pretrained_file, image_dims=None, mean=None,
                 input_scale=None, raw_scale=None, channel_swap=None):
        Net.__init__(self, model_file, TEST, weights=pretrained_file)
        in_ = self.inputs[0]
        self.transformer = io.Transformer({in_: self.blobs[in_].shape})
        self.transformer.set_transpose(in_, (2, 0, 1))
        if mean is not None:
            self.transformer.set_mean(in_, mean)
        if input_scale is not None:
            self.transformer.set_input_scale(in_, input_scale)
        if raw_scale is not None:
            self.transformer.set_raw_scale(in_, raw_scale)
        if channel_swap is not None:
            self.transformer.set_channel_swap(in_, channel_swap)
        self.crop_dims = numpy.array(self.blobs[in_].shape[2:])
        self.image_dims = numpy.array(image_dims if image_dims is not None else self.crop_dims)

    def predict(self, inputs, oversample=True):
        """Scores (N x classes) for a list of H x W x K images.

        Each image is resized to image_dims; with `oversample`, the scores
        are the mean over 10 crops (corners, centre and their mirrors),
        otherwise the centre crop is used.
        """
        h, w = int(self.image_dims[0]), int(self.image_dims[1])
        images = numpy.zeros((len(inputs), h, w, inputs[0].shape[2]), numpy.float32)
        for i, image in enumerate(inputs):
            images[i] = io.resize_image(image, (h, w))
        if oversample:
            images = io.oversample(images, self.crop_dims)
        else:
            ch, cw = int(self.crop_dims[0]), int(self.crop_dims[1])
            y, x = int((h - ch) / 2.0), int((w - cw) / 2.0)
            images = images[:, y:y + ch, x:x + cw]
        in_ = self.inputs[0]
        batch = numpy.stack([self.transformer.preprocess(in_, image) for image in images])
        scores = self.forward_all(**{in_: batch})[self.outputs[0]]
        if oversample:
            scores = scores.reshape(len(scores) // 10, 10, -1).mean(axis=1)
        return scores
