"""adt_fast/data/batches.py: appendix C.1's random crop draws its vertical and
horizontal offsets independently (torchvision RandomCrop(32, padding=4)), per example."""
import torch

from adt_fast.data import augment_batch


def test_crop_row_and_column_offsets_are_drawn_independently():
    n, size = 200, 6
    # pixel value = 1 + 10*row + col, so the crop's top/left are read off its first pixel
    rows = torch.arange(size).view(size, 1) * 10
    cols = torch.arange(size).view(1, size)
    x = (1 + rows + cols).float().expand(n, 1, size, size).contiguous()
    out = augment_batch(x, "crop_flip", generator=torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    tops, lefts = [], []
    for k in range(n):
        found = [(t, l) for t in range(9) for l in range(9)
                 for win in [padded[k, :, t:t + size, l:l + size]]
                 if torch.equal(win, out[k]) or torch.equal(win.flip(-1), out[k])]
        assert found, k
        tops.append(found[0][0]); lefts.append(found[0][1])
    tops, lefts = torch.tensor(tops), torch.tensor(lefts)
    # independent uniform draws on 0..8 agree about 1/9 of the time, never 200 times out of 200
    assert (tops == lefts).float().mean() < 0.5


def test_batch_augmentation_draws_from_the_given_generator_only():
    """batches.py: randomness comes from ``generator`` when given; a run seeded by its generator
    repeats whatever else has used torch's default generator in between."""
    from adt_fast.data import iterate_batches

    x, y = torch.rand(12, 3, 8, 8), torch.arange(12)

    def one_pass(seed, noise):
        torch.manual_seed(noise)
        batches = iterate_batches(x, y, 5, shuffle=True, augment="crop_flip",
                                  generator=torch.Generator().manual_seed(seed))
        before = torch.get_rng_state()
        out = [xb for xb, _ in batches]
        assert torch.equal(torch.get_rng_state(), before)  # the default generator is untouched
        return torch.cat(out)

    assert torch.equal(one_pass(3, noise=1), one_pass(3, noise=2))
