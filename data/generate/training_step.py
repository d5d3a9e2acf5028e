"""One training step's golden for tests/support/training_golden.h, shared by the generators."""
import numpy as np
import torch


def step_arrays(model, x, seed):
    """Runs `model` on `x`, draws each output's gradient dy<i> (normal, from `seed`) and
    back-propagates the sum of y<i>·dy<i> (the parameters' .grad set). Returns the arrays of the
    golden but the parameters' gradients: x, y<i> and dy<i>."""
    ys = model(x)
    g = torch.Generator().manual_seed(seed)
    dys = [torch.randn(y.shape, generator=g) for y in ys]
    model.zero_grad()
    sum((y * dy).sum() for y, dy in zip(ys, dys)).backward()
    arrays = {"x": x.numpy()}
    for i, (y, dy) in enumerate(zip(ys, dys)):
        arrays[f"y{i}"] = np.ascontiguousarray(y.detach().numpy())
        arrays[f"dy{i}"] = dy.numpy()
    return arrays
