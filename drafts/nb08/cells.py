md(r'''
# 08 · Comparing the methods: measurements instead of stars

Explanation tutorials often end with a table of stars ("localisation quality: ⭐⭐⭐⭐ best").
Stars cannot be rerun. This notebook replaces them with numbers you recompute on a laptop, for
**every method in the course's registry** (`xai_helpers.registry.METHODS`: CAM, Grad-CAM,
Grad-CAM++, Score-CAM, LRP, the CAM variants, and whatever a later notebook registers; a new
method joins every table below without a line changed here), on EfficientNet-Lite0:

1. every photo × every method, explaining the same class;
2. **[faithfulness](glossary.md#faithfulness)**: [deletion and insertion](glossary.md#deletion-and-insertion)
   curves ([Petsiuk et al. 2018, Sec. 4.1](references.md#petsiuk2018)) and
   [Average Drop](glossary.md#average-drop) / Increase in Confidence
   ([Chattopadhay et al. 2018, Sec. 5.1](references.md#chattopadhay2018)), against two maps every
   method must beat, a *random* map and a *centred Gaussian*;
3. **localisation**: the [pointing game](glossary.md#pointing-game)
   ([Zhang et al. 2016, Sec. 5.1](references.md#zhang2016)) and its energy-based version
   ([Wang et al. 2020, Sec. 5.2](references.md#wang2020)) on hand-drawn boxes and on a synthetic
   set with exact boxes;
4. **[sanity checks](glossary.md#sanity-check)**: [cascading randomisation](glossary.md#cascading-randomisation)
   of the weights ([Adebayo et al. 2018, Sec. 3.1](references.md#adebayo2018));
5. **cost**: forward and backward passes counted as they happen, time, and memory where repeated
   runs resolve it;
6. the star table redone with these numbers, and where they agree with the papers.

**Learning objectives.** After this notebook you can

1. compute a deletion curve and its [AUC](glossary.md#auc) in plain PyTorch and check it against
   `xai_helpers.metrics`, naming the [baseline](glossary.md#baseline) it used;
2. compute Average Drop, the pointing game and the energy-based pointing game, and explain how
   each can mislead (saturation on easy data, [out-of-distribution](glossary.md#out-of-distribution)
   inputs, sparse maps);
3. run the cascading randomisation check and read its
   [Spearman](glossary.md#spearman-rank-correlation) and [SSIM](glossary.md#ssim) curves;
4. count what an explanation costs (forward and backward passes, time, memory) and choose which
   methods a budget allows, by a stated rule;
5. read a comparison table critically: the same images for every method, the spread and not only
   the mean, reference maps every method must beat.

**Prerequisites.** Notebooks 01-05 (CAM, Grad-CAM, Grad-CAM++, Score-CAM, LRP); the later
method notebooks if you ran them (their methods appear here by themselves). Math: the softmax,
the trapezoid rule, rank correlation (recalled where it is used).

**Estimated study time.** About 75 minutes: 45 to read and run, 30 for the three exercises.
''')

code(r'''
%config InlineBackend.figure_format = "png"
import dataclasses
import time
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from IPython.display import Markdown, display

from xai_helpers import metrics
from xai_helpers.boxes import boxes_to_mask, load_photo_boxes, sample_boxes
from xai_helpers.explain import explain
from xai_helpers.images import SAMPLE_NAMES, sample_image
from xai_helpers.models import load_model
from xai_helpers.progress import progress
from xai_helpers.registry import get_method, method_names
from xai_helpers.synthetic import make_localization_set
from xai_helpers.viz import draw_boxes, show_map, use_course_style

use_course_style()  # figures readable at slide size
torch.manual_seed(0)
lm = load_model()  # one-line switch: load_model("resnet50") (needs its torchvision weights)
START = time.perf_counter()
lm
''')

md(r'''
## The methods, and the budget

The methods are read from the registry, in learning order. Every registered method is run on
the **same five photos**; Score-CAM's cost is no excuse at this size. The cost of a method is
counted while it runs (`metrics.measure_cost`: hooks on the model count every forward pass,
the images it carried and every backward pass; LRP reports the passes through its rebuilt copy
of the network). Two numbers, stated here and applied by the code, decide how far a method goes:

* **`PHOTO_BUDGET`** forward images per photo: a method whose explanation of the first photo
  costs more is stopped there and left out of the comparison, by name, with its count (the cell
  below prints which);
* **`EVERYWHERE_BUDGET`** forward images per photo: a method that stays within it on every
  photo also joins the synthetic set (`N_SYNTHETIC` more images) and the sanity check (one photo
  explained again after each of `len(CUT_POINTS)` randomisation steps). Costlier methods are
  compared on the photos only.

The budgets below keep this notebook within two minutes on a laptop CPU: methods that need
thousands of forward images per photo (RISE, Ablation-CAM) are left out here by the rule, with
their counts. Raise `N_SYNTHETIC`, `STEPS` or the budgets for a longer, less noisy run; every
number below is recomputed, and the prose quotes it. For every method on every photo, with
32 steps and confidence intervals, run the batch job instead (minutes to hours on a CPU):

    python -m xai_helpers.evaluate samples --steps 32 --out runs/comparison
''')

code(r'''
PHOTOS = list(SAMPLE_NAMES)  # chelsea, coffee, rocket, astronaut, cat_and_coffee
STEPS = 10  # K, steps of the deletion / insertion curves
N_SYNTHETIC = 8  # synthetic images with exact boxes (of 100)
SANITY_PHOTO = "chelsea"
CUT_POINTS = ["classifier", "bn2", "blocks.6"]  # top (logits) first
BATCH = 32  # images per forward pass in the metrics
PHOTO_BUDGET = 900  # forward images per photo
EVERYWHERE_BUDGET = 2  # forward images per photo to join the synthetic set and sanity check
REFERENCES = ["random", "centre Gaussian", "edge detector"]  # maps that ignore the model
LABEL = {name: get_method(name).label for name in method_names()} | {r: r for r in REFERENCES}
print(f"{len(method_names())} registered methods:", ", ".join(method_names()))
''')

md(r'''
### One function, every method

`explain_with` takes a plain `nn.Module` (so the randomised copies of the sanity check are
explained the same way), a batch and its classes, and returns one map per image at input
resolution. What a map's values mean is in the method's record: unsigned maps (the CAM family)
are min-max normalised to [0, 1], signed ones (LRP) keep their sign, and metrics that need a
non-negative map take the positive part. Three reference maps ignore the model, and every
method must beat them: uniform noise (a random pixel order); a Gaussian centred in the frame
(σ = 56 px, a quarter of the side), since photographers centre their subject and "look at the
middle" is a strong baseline; and the edge map of the image (Sobel gradient magnitude), the kind
of picture gradient maps are sometimes accused of being.
''')

code(r'''
SIDE = lm.input_size
_yy, _xx = torch.meshgrid(torch.arange(SIDE) + 0.5, torch.arange(SIDE) + 0.5, indexing="ij")
GAUSSIAN = torch.exp(-((_yy - SIDE / 2) ** 2 + (_xx - SIDE / 2) ** 2) / (2 * (SIDE / 4) ** 2))
SOBEL = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def explain_with(method, model, x, target):
    """``method``'s maps (N, H, W) of ``model``, which may be a randomised copy of lm.model."""
    if method == "random":
        return torch.rand(len(x), SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    if method == "centre Gaussian":
        return GAUSSIAN.expand(len(x), SIDE, SIDE).clone()
    if method == "edge detector":  # Sobel gradient magnitude of the grey image
        k = torch.stack([SOBEL, SOBEL.T])[:, None].to(x)
        return F.conv2d(x.mean(1, keepdim=True), k, padding=1).pow(2).sum(1).sqrt().cpu()
    options = {"progress": False} if get_method(method).reports_progress else {}
    loaded = dataclasses.replace(lm, model=model)  # same preprocessing and CAM layer
    return explain(loaded, x, method, target, **options).float().cpu()


def signed(method):
    return method not in REFERENCES and get_method(method).signed


def positive(method, maps):
    # Average Drop and the energy game need non-negative maps: negative evidence is cut
    return maps.clamp(min=0) if signed(method) else maps
''')

md(r'''
## 1. Every photo × every method, same class

Each photo is explained for its top-1 class; `cat_and_coffee` also for the espresso, because
its espresso box is measured in section 3 (an object is explained for its own class). All
classes of one photo go in one call: Score-CAM then shares its masked passes between them, since
one pass scores every class.
''')

code(r'''
x_photos = lm.preprocess([sample_image(name) for name in PHOTOS])
with torch.no_grad():
    probs = lm.model(x_photos).softmax(1)
targets = probs.argmax(1)
OBJECTS = load_photo_boxes()
classes = {name: [int(t)] for name, t in zip(PHOTOS, targets, strict=True)}
for o in OBJECTS:  # an object whose photo's top-1 is not one of its classes: its first class
    if not set(classes[o.image]) & set(o.classes):
        classes[o.image].append(o.classes[0])
for i, name in enumerate(PHOTOS):
    names = ", ".join(f"{lm.class_names[c]!r} (p = {probs[i, c]:.2f})" for c in classes[name])
    print(f"{name:15s} explains {names}")
''')

code(r'''
def explain_photo(method, name):
    i, cls = PHOTOS.index(name), classes[name]
    x = x_photos[i : i + 1].repeat(len(cls), 1, 1, 1)
    return metrics.measure_cost(partial(explain_with, method, lm.model, x, torch.tensor(cls)),
                                lm.model)


photo_maps, costs, left_out = {}, {}, {}
bar = progress(total=len(LABEL) * len(PHOTOS), desc="photos x methods", unit="map")
for method in LABEL:
    photo_maps[method], costs[method] = {}, []
    for name in PHOTOS:
        photo_maps[method][name], cost = explain_photo(method, name)
        costs[method].append(cost)
        bar.update(1)
        if method not in REFERENCES and name == PHOTOS[0] and cost.forward_images > PHOTO_BUDGET:
            left_out[method] = cost.forward_images
            bar.update(len(PHOTOS) - 1 - PHOTOS.index(name))
            break
bar.close()
METHODS = [m for m in method_names() if m not in left_out]
EVERYWHERE = [m for m in METHODS
              if max(c.forward_images for c in costs[m]) <= EVERYWHERE_BUDGET]
for method, n in left_out.items():
    print(f"left out: {LABEL[method]} needs {n} forward images on {PHOTOS[0]} (> {PHOTO_BUDGET})")
print("on the photos only:", ", ".join(LABEL[m] for m in METHODS if m not in EVERYWHERE))
''')

code(r'''
passes = {m: [c.forward_images for c in costs[m]] for m in METHODS}
for m in METHODS:
    print(f"{LABEL[m]:16s} forward images per photo: {passes[m]}")
sc = passes["score_cam"]
print(f"Score-CAM ran {min(sc)} to {max(sc)} forward images per photo ({sum(sc)} in all)")
assert min(sc) > EVERYWHERE_BUDGET  # beyond the budget: compared on the photos only
''')

code(r'''
def top1_map(method, name):  # the map of the photo's top-1 class
    return photo_maps[method][name][0]


rows = ["photo"] + METHODS
fig, axes = plt.subplots(len(rows), len(PHOTOS), figsize=(1.9 * len(PHOTOS), 1.75 * len(rows)),
                         layout="constrained", squeeze=False)
for c, name in enumerate(PHOTOS):
    view = lm.view(sample_image(name))
    axes[0, c].imshow(view)
    axes[0, c].set_axis_off()
    axes[0, c].set_title(f"{name}\n{lm.class_names[classes[name][0]][:14]}", fontsize=10)
    for r, method in enumerate(METHODS, start=1):
        show_map(axes[r, c], top1_map(method, name), view, colorbar=False,
                 scale="signed" if signed(method) else "values",
                 title="" if signed(method) else None)
for r, label in enumerate(["photo"] + [LABEL[m] for m in METHODS]):
    axes[r, 0].set_axis_on()
    axes[r, 0].set(xticks=[], yticks=[])
    axes[r, 0].set_ylabel(label, fontsize=10)
fig.colorbar(plt.cm.ScalarMappable(cmap="jet"), ax=axes[1:, -1], shrink=0.4,
             label="unsigned maps: [0, 1] as returned (min-max normalised by the method)")
fig.suptitle("Top-1 class of each photo; signed maps: red for, blue against, ± clip bound "
             "(99.5th pct of |R|) above each", fontsize=10)
plt.show()
''')

md(r'''
CAM and Grad-CAM look the same, and they are: on a network whose last feature maps go through
[global average pooling](glossary.md#global-average-pooling) into one linear layer, Grad-CAM's
weights are the classifier's weights divided by $Z = 49$, so Grad-CAM *is* CAM up to a
constant (notebook 02), which the min-max normalisation removes. A table that gives them
different stars measures nothing.
''')

code(r'''
for name in PHOTOS:
    gap = (photo_maps["cam"][name] - photo_maps["grad_cam"][name]).abs().max().item()
    assert gap < 1e-4, (name, gap)
print("CAM and Grad-CAM agree on every photo and class to 1e-4")
''')

md(r'''
## 2. Faithfulness: does the map point at what the *model* uses?

**Deletion** ([Petsiuk et al. 2018, Sec. 4.1](references.md#petsiuk2018)): remove the pixels
in the order the map ranks them, most important first, replacing them by a baseline, and follow
the probability of the class. After $k$ of $K$ steps the $n_k = \mathrm{round}(k\,HW/K)$ top
pixels are gone:

$$
\tilde x^{(k)}_p = \begin{cases} b_p & \text{rank}(p) < n_k \\ x_p & \text{otherwise}\end{cases},
\qquad
\text{AUC} = \int_0^1 f_c\big(\tilde x^{(k)}\big)\, d\!\left(\tfrac{n_k}{HW}\right)
\quad\text{(trapezoid rule)}.
$$

A faithful map makes the probability collapse early: **low deletion AUC is good**.
**Insertion** is the mirror image: start from the baseline and put the top pixels back; **high
insertion AUC is good**. Baselines, as in RISE: deletion replaces pixels by **zeros of the
normalised input** (`"dataset_mean"`: the mean colour, mid-grey for Lite0); insertion starts
from a **Gaussian blur** of the image (σ = 5 px). Ties in a map (the flat zero regions of a CAM)
are broken in random order, so a constant map scores like a random pixel order in expectation.

First in plain PyTorch, one curve for Grad-CAM on the cat:
''')

code(r'''
m, xi, ti = top1_map("grad_cam", "chelsea"), x_photos[:1], int(targets[0])
H, W = m.shape
g = torch.Generator().manual_seed(0)
perm = torch.argsort(torch.rand(1, H * W, generator=g), dim=1)[0]  # shuffle first ...
order = perm[torch.argsort(m.flatten()[perm], descending=True, stable=True)]  # ... ties: random
plain = []
with torch.no_grad():
    for k in range(STEPS + 1):
        n_k = round(k * H * W / STEPS)
        xk = xi.clone().flatten(2)
        xk[..., order[:n_k]] = 0.0  # the "dataset_mean" baseline: the zero input tensor
        plain.append(lm.model(xk.view_as(xi)).softmax(1)[0, ti].item())
print(np.round(plain, 3))
''')

md(r'''
The helper builds all $K+1$ images at once and runs them in batches; the same curve:
''')

code(r'''
helper = metrics.deletion(lm.model, xi, m[None], ti, baseline="dataset_mean", steps=STEPS)
print(np.round(helper.scores[0].numpy(), 3), "AUC", round(helper.mean_auc, 4))
assert np.allclose(plain, helper.scores[0].numpy(), atol=1e-4)
''')

md(r'''
Is the blur a neutral starting point? Ideally the blurred image carries little evidence. The
probabilities below say how much of the class survives the blur (and the mean colour):
''')

code(r'''
with torch.no_grad():
    p_blur = lm.model(metrics.make_baseline(x_photos, "blur")).softmax(1)
    p_mean = lm.model(metrics.make_baseline(x_photos, "dataset_mean")).softmax(1)
idx = torch.arange(len(PHOTOS))
rows = zip(PHOTOS, probs[idx, targets], p_blur[idx, targets], p_mean[idx, targets], strict=True)
for name, a, b, c in rows:
    print(f"{name:15s} image {a:.2f}   blurred {b:.2f}   mean colour {c:.4f}")
''')

md(r'''
**Average Drop / Increase in Confidence**
([Chattopadhay et al. 2018, Sec. 5.1](references.md#chattopadhay2018)): show the model only the
explanation, $\tilde x = M \odot x$ with the map $M$ min-max normalised to [0, 1] (zeros: the
mean colour), and compare the class probability $O^c_i$ with the full image's $Y^c_i$:

$$
\text{Average Drop} = \frac{100}{N}\sum_i \frac{\max(0,\,Y^c_i - O^c_i)}{Y^c_i}\ (\downarrow),
\qquad
\text{Increase in Confidence} = \frac{100}{N}\sum_i \mathbb{1}\left[Y^c_i < O^c_i\right]\ (\uparrow).
$$
''')

code(r'''
M = top1_map("grad_cam", "chelsea")
with torch.no_grad():
    y_full = lm.model(xi).softmax(1)[0, ti]
    o_masked = lm.model(xi * ((M - M.min()) / (M.max() - M.min()))).softmax(1)[0, ti]
plain_drop = max(0.0, (y_full - o_masked).item()) / y_full.item()
result = metrics.average_drop_increase(lm.model, xi, M[None], ti)
print(f"Y = {y_full:.3f}, O = {o_masked:.3f}, drop = {plain_drop:.3f}")
assert abs(result.drop.item() - plain_drop) < 1e-5
assert bool(result.increase) == bool(o_masked > y_full)
''')

md(r'''
Now every method and both reference maps, on the **same five photos**. A curve of $K$ steps
costs $\lceil (K+1) N / B \rceil$ forward passes of a batch of $B$ images.
''')

code(r'''
faith = {}
for method in progress(METHODS + REFERENCES, desc="faithfulness", unit="method"):
    maps = torch.stack([top1_map(method, name) for name in PHOTOS])
    common = dict(steps=STEPS, batch_size=BATCH)
    drop = metrics.average_drop_increase(lm.model, x_photos, positive(method, maps), targets,
                                         batch_size=BATCH)
    faith[method] = {
        "deletion": metrics.deletion(lm.model, x_photos, maps, targets, "dataset_mean",
                                     **common).auc,
        "insertion": metrics.insertion(lm.model, x_photos, maps, targets, "blur", **common).auc,
        "drop": 100 * drop.drop,
        "increase": drop.increase,
    }
''')

code(r'''
def strip_plot(ax, values, title, better):
    """One row per method: a dot per image, a bar at the mean."""
    names = list(values)
    rng = np.random.default_rng(0)
    for row, method in enumerate(names):
        v = np.asarray(values[method], dtype=float)
        ax.scatter(v, row + rng.uniform(-0.15, 0.15, len(v)), s=14, alpha=0.7,
                   color="grey" if method in REFERENCES else "tab:blue")
        ax.plot([v.mean()] * 2, [row - 0.35, row + 0.35], color="black", lw=2)
    ax.set_yticks(range(len(names)), [LABEL[m] for m in names])
    ax.invert_yaxis()
    ax.set_title(f"{title} ({better} is better)")
    ax.grid(axis="x", alpha=0.3)


fig, axes = plt.subplots(1, 3, figsize=(12, 0.32 * len(faith) + 1.6), sharey=True,
                         layout="constrained")
for ax, (key, title, better) in zip(axes, [("deletion", "deletion AUC", "lower"),
                                           ("insertion", "insertion AUC", "higher"),
                                           ("drop", "drop in % (Average Drop)", "lower")],
                                          strict=True):
    strip_plot(ax, {m: r[key] for m, r in faith.items()}, title, better)
fig.suptitle(f"Faithfulness on the same {len(PHOTOS)} photos: a dot per photo, a bar at the mean")
plt.show()
''')

code(r'''
mean = {m: {k: float(torch.as_tensor(v).double().mean()) for k, v in r.items()}
        for m, r in faith.items()}
beats_insertion = [m for m in METHODS if mean[m]["insertion"] > max(
    mean[r]["insertion"] for r in REFERENCES)]
beats_random_deletion = [m for m in METHODS if mean[m]["deletion"] < mean["random"]["deletion"]]
print("insertion: beat both reference maps:", ", ".join(LABEL[m] for m in beats_insertion))
print("deletion: delete faster than the random order:",
      ", ".join(LABEL[m] for m in beats_random_deletion) or "none")
print("Average Drop %:", {LABEL[m]: round(v["drop"], 1) for m, v in mean.items()})
''')

md(r'''
The two lists above are this run's verdicts. Why a smooth CAM-family map can lose to a random
pixel order on **deletion**: deleting $1/K$ of the pixels at random sprinkles grey dots over the
whole image, which destroys the textures the network relies on faster than removing one coherent
region does. That drop is an [out-of-distribution](glossary.md#out-of-distribution) artefact,
not evidence: the criticism behind [ROAR](glossary.md#roar)
([Hooker et al. 2019](references.md#hooker2019)) and ROAD
([Rong et al. 2022](references.md#rong2022)). Pixel-sharp maps profit from the same artefact, so
per-pixel deletion favours high-frequency maps: compare maps of like resolution with it, and
trust insertion more. **Average Drop** assumes a smooth mask: for a sparse, pixel-level map
(the positive part of LRP) $M \odot x$ hides almost the whole image, and the number measures
sparsity rather than faithfulness. Read each dot, not only the bar: with five photos one image
can move a mean a long way.
''')

md(r'''
## 3. Localisation: does the map point at the object?

**Pointing game** ([Zhang et al. 2016, Sec. 5.1](references.md#zhang2016)): a hit when the
map's maximum lies inside the object's box, with a tolerance of 15 px; accuracy = hits / images.
**Energy-based pointing game** ([Wang et al. 2020, Sec. 5.2](references.md#wang2020)): the share
of the map's mass inside the box,

$$
\text{Proportion} = \frac{\sum_{p\in \text{box}} M(p)}{\sum_{p} M(p)},
$$

with $M$ min-max normalised (signed maps: their positive part). A uniform map scores the box's
share of the image, the chance level.

### Boxes on the photos

`data/boxes.json` holds boxes drawn by hand in each photo's own pixels (`data/BOXES.md` says
how); `sample_boxes(name, lm)` carries them through the model's resize and centre crop. The cat of
`chelsea` and the cup of `coffee` fill the whole crop, so their boxes say nothing; the rocket and
the two halves of `cat_and_coffee` are the informative ones (`astronaut` has no box).
''')

code(r'''
fig, axes = plt.subplots(1, len(OBJECTS), figsize=(2.3 * len(OBJECTS), 2.9), layout="constrained")
object_masks, object_maps = [], {m: [] for m in METHODS + REFERENCES}
for ax, o in zip(axes, OBJECTS, strict=True):
    box = sample_boxes(o.image, lm)[o.label]
    object_masks.append(boxes_to_mask([box], (SIDE, SIDE))[0])
    cls = next(c for c in classes[o.image] if c in o.classes or c == o.classes[0])
    for method in object_maps:
        object_maps[method].append(photo_maps[method][o.image][classes[o.image].index(cls)])
    ax.imshow(lm.view(sample_image(o.image)))
    draw_boxes(ax, [box], color="lime", linewidth=2)
    ax.set_title(f"{o.image}:\n{o.label} ({lm.class_names[cls][:12]})", fontsize=10)
    ax.set_axis_off()
plt.show()
object_masks = torch.stack(object_masks)
''')

code(r'''
photo_loc = {}
for method, maps in object_maps.items():
    maps = torch.stack(maps)
    photo_loc[method] = {
        "hits": metrics.pointing_game(maps, object_masks),
        "energy": metrics.energy_pointing_game(positive(method, maps), object_masks),
    }
for method, r in photo_loc.items():
    print(f"{LABEL[method]:16s} hits {r['hits'].int().tolist()}  "
          f"energy {np.round(r['energy'].numpy(), 2)}")
rocket = [o.image for o in OBJECTS].index("rocket")
rocket_hits = [m for m in METHODS if bool(photo_loc[m]["hits"][rocket])]
print("the maximum lies on the rocket for:", ", ".join(LABEL[m] for m in rocket_hits) or "none")
''')

md(r'''
The thin rocket (about 17 px wide in the crop) tests resolution: the CAM family works on a
7 × 7 grid of 32 px cells, too coarse to put its maximum reliably on such an object, while
pixel-level maps can. The line above names the methods whose maximum lies on it in this run.
''')

md(r'''
### A synthetic set with exact boxes

Four photo objects are too few for statistics, and hand-drawn boxes are approximate. The
synthetic set pastes the cat's face or the espresso cup, at a random size and place, onto a random
patch of a texture shipped with scikit-image (brick, grass, gravel); the pasted rectangle *is*
the box. `make_localization_set(n=100, seed=0)` regenerates the same images, byte for byte,
without files. We explain the object's class on the first `N_SYNTHETIC`, with the methods within
`EVERYWHERE_BUDGET` (the rule above). First: does the model still recognise the objects?
''')

code(r'''
every = make_localization_set(n=100, seed=0)
with torch.no_grad():
    pred = torch.cat([lm.model(lm.preprocess(list(every.images[i : i + 25]))).argmax(1)
                      for i in range(0, 100, 25)])
correct = np.array([int(p) in every.accepted(i) for i, p in enumerate(pred.tolist())])
print(f"top-1 accuracy on the 100 synthetic images: {correct.mean():.2f} "
      f"(a cat counts as any of the 5 domestic cat classes)")
assert correct.mean() >= 0.9
synthetic = every.subset(slice(0, N_SYNTHETIC))
x_syn = lm.preprocess(list(synthetic.images))
t_syn = torch.as_tensor(synthetic.classes)
boxes_syn = [metrics.box_to_input_frame(b, (256, 256), lm.resize, SIDE) for b in synthetic.boxes]
masks_syn = boxes_to_mask(boxes_syn, (SIDE, SIDE))
syn_loc = {}
for method in progress(EVERYWHERE + REFERENCES, desc="synthetic", unit="method"):
    maps = torch.cat([explain_with(method, lm.model, x_syn[i : i + 8], t_syn[i : i + 8])
                      for i in range(0, N_SYNTHETIC, 8)])
    syn_loc[method] = {"maps": maps[:3].clone(), "hits": metrics.pointing_game(maps, masks_syn),
                       "energy": metrics.energy_pointing_game(positive(method, maps), masks_syn)}
chance = masks_syn.double().mean().item()
print(f"chance level of the energy game (mean box area): {chance:.2f}")
''')

code(r'''
fig, axes = plt.subplots(1, 2, figsize=(11, 0.32 * len(syn_loc) + 1.6), sharey=True,
                         layout="constrained")
strip_plot(axes[0], {m: r["hits"].double() for m, r in syn_loc.items()},
           "pointing game: 1 = hit", "higher")
strip_plot(axes[1], {m: r["energy"] for m, r in syn_loc.items()}, "energy in the box",
           "higher")
axes[1].axvline(chance, color="grey", ls="--", lw=1)
axes[1].text(chance, -0.6, " chance", color="grey", fontsize=9)
fig.suptitle(f"Localisation on {N_SYNTHETIC} synthetic images: a dot per image, a bar at the mean")
plt.show()
''')

code(r'''
shown = list(syn_loc)
ncols = 5
nrows = -(-len(shown) // ncols)
fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), layout="constrained",
                         squeeze=False)
picture = lm.unnormalize(x_syn[0])
for ax, method in zip(axes.flat[: len(shown)], shown, strict=True):
    show_map(ax, syn_loc[method]["maps"][0], picture, colorbar=False, title=LABEL[method],
             scale="signed" if signed(method) else "values")
    draw_boxes(ax, [boxes_syn[0]], color="lime", linewidth=1.5)
for ax in axes.flat[len(shown):]:
    ax.set_axis_off()
fig.suptitle(f"Synthetic image 0 ({synthetic.labels[0]} on {synthetic.textures[0]}), exact box "
             "in green; unsigned maps in [0, 1]")
plt.show()
''')

code(r'''
hits_syn = {m: r["hits"].double().mean().item() for m, r in syn_loc.items()}
energy_syn = {m: r["energy"].mean().item() for m, r in syn_loc.items()}
for m in syn_loc:
    print(f"{LABEL[m]:16s} pointing {hits_syn[m]:.2f}   energy {energy_syn[m]:.2f}")
above_gauss = [m for m in EVERYWHERE if energy_syn[m] > energy_syn["centre Gaussian"]]
print("energy above the centre Gaussian:", ", ".join(LABEL[m] for m in above_gauss))
''')

md(r'''
Read the pointing game next to the centre Gaussian. The model recognises a pasted object only
when it is large, and a large object covers the centre of the frame, so "look at the centre"
scores in the pointing game too: the game **saturates** on such data. The energy-based version
saturates less; the last line above names the methods that put more of their mass into the box
than the centred Gaussian does. This is why Wang et al. proposed it, and a reason to report
both.
''')

md(r'''
## 4. Sanity checks: does the map depend on what the model learned?

[Adebayo et al. (2018, Sec. 3.1)](references.md#adebayo2018) randomise the weights of a trained
network layer by layer, **from the logits down** (cascading), and explain the same class again
after each step. A method whose maps stay the same while the learned weights are gone explains
the *image*, not the model: it **fails**. A method that **passes** shows similarity falling as
soon as the top layer is randomised. Similarity between the original and the randomised map:
Spearman rank correlation of the pixels and SSIM (maps min-max normalised).

`metrics.randomize_layers` replaces each parameter tensor of a layer by Gaussian noise with the
same mean and standard deviation (scale kept, structure gone) on a deep copy; the trained model
is never touched. The methods are those within `EVERYWHERE_BUDGET`; the three reference maps,
which ignore the model, show what failing looks like.
''')

code(r'''
i = PHOTOS.index(SANITY_PHOTO)
x_s, t_s = x_photos[i : i + 1], targets[i : i + 1]
sanity = {}
for method in progress(EVERYWHERE + REFERENCES, desc="sanity", unit="method"):
    sanity[method] = metrics.cascading_randomization(
        lm.model, CUT_POINTS, partial(explain_with, method), x_s, t_s, seed=0)
rho = {m: r.spearman[:, 0] for m, r in sanity.items()}
ssim = {m: r.ssim[:, 0] for m, r in sanity.items()}
''')

code(r'''
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained", sharey=True)
steps = sanity["random"].steps
colours = plt.cm.tab20(np.linspace(0, 1, 20))
for ax, (values, title) in zip(axes, [(rho, "Spearman rank correlation"), (ssim, "SSIM")],
                               strict=True):
    for j, (method, v) in enumerate(values.items()):
        style = {"color": "black", "ls": ["--", ":", "-."][REFERENCES.index(method)]} if (
            method in REFERENCES) else {"color": colours[j % 20], "ls": "-" if j % 2 else ":"}
        ax.plot(range(len(steps)), v, marker="o", label=LABEL[method], **style)
    ax.set_xticks(range(len(steps)), steps, rotation=30)
    ax.set(title=f"{title} to the original", xlabel="randomised down to (cumulative)",
           ylim=(-0.6, 1.05))
    ax.axhline(0, color="grey", lw=0.5)
axes[1].legend(fontsize=9, loc="center left", bbox_to_anchor=(1.0, 0.5))
plt.show()
''')

code(r'''
shown = list(sanity)
fig, axes = plt.subplots(len(shown), len(steps), figsize=(1.5 * len(steps), 1.45 * len(shown)),
                         layout="constrained", squeeze=False)
for row, method in enumerate(shown):
    for col, step in enumerate(steps):
        show_map(axes[row, col], sanity[method].maps[col, 0], colorbar=False,
                 scale="signed" if method in METHODS and signed(method) else "values",
                 title=(step if row == 0 else None))
    axes[row, 0].set_axis_on()
    axes[row, 0].set(xticks=[], yticks=[])
    axes[row, 0].set_ylabel(LABEL[method], fontsize=9)
fig.suptitle(f"{SANITY_PHOTO}: maps after each step\n(each on its own scale)", fontsize=10)
plt.show()
''')

code(r'''
for method in sanity:
    print(f"{LABEL[method]:16s} Spearman {np.round(rho[method].numpy(), 2)}  "
          f"SSIM {np.round(ssim[method].numpy(), 2)}")
passes_first = [m for m in EVERYWHERE + REFERENCES if rho[m][1] < 0.5 and ssim[m][1] < 0.5]
partly = [m for m in EVERYWHERE + REFERENCES if m not in passes_first and min(rho[m][1:]) < 0.5]
fails = [m for m in EVERYWHERE + REFERENCES if m not in passes_first + partly]
print("change at the first cut (classifier):", ", ".join(LABEL[m] for m in passes_first))
print("change only further down, or only in one measure:", ", ".join(LABEL[m] for m in partly))
print("never fall below 0.5 in rank correlation:", ", ".join(LABEL[m] for m in fails) or "none")
''')

md(r'''
A method **passes** when its similarity falls as soon as the learned weights go (the first cut
randomises the classifier), and **fails** when its map survives the randomisation. The three
reference maps never look at the model: their similarity stays at 1 at every step, which is
what failing looks like. A signed method can also flip sign (Spearman below zero: a random
classifier turns evidence for into evidence against) while the *structure* of its map, carried
by the untouched lower layers and the image itself, survives in the SSIM: the observation of
[Sixt et al. 2020](references.md#sixt2020) for LRP's rules. Compare absolute values
(`absolute=True` in `metrics.cascading_randomization`) to see it in the rank correlation too.
''')

md(r'''
## 5. Cost on this machine

Measured while computing section 1, one call per photo (one map, two for `cat_and_coffee`):
wall time, the model's forward passes and the images they carried, and backward passes, counted
as they happen (LRP runs a rebuilt copy of the network, BatchNorm folded, and reports its
forward pass and its relevance pass, a modified backward pass, through that copy). Memory is
the peak extra resident memory (CUDA's peak allocation on a GPU), measured on one photo **three
times** and reported only when the three runs agree (`Cost.memory_mib()`: spread at most a
quarter of the median, median above the sampler's noise floor,
`metrics.MEMORY_FLOOR_MIB`); the methods beyond `EVERYWHERE_BUDGET` are not repeated.
Times depend on the machine and on what else it runs.
''')

code(r'''
memory = {}
for method in progress(EVERYWHERE, desc="memory, 3 runs each", unit="method"):
    run = partial(explain_with, method, lm.model, x_photos[:1], targets[:1])
    memory[method] = metrics.measure_cost(run, lm.model, repeats=3)[1]


def memory_cell(method):
    if method not in memory:
        return "not repeated (cost)"
    mib, runs = memory[method].memory_mib(), memory[method].peak_memory_all_mib
    if mib is None:  # the three runs disagree, or the peak is within the sampler's noise
        return "not resolved: " + " / ".join(f"{v:.0f}" for v in runs)
    return f"{mib:.0f}"
''')

code(r'''
def span(values, fmt="{:.0f}"):
    lo, hi = min(values), max(values)
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)} to {fmt.format(hi)}"


lines = ["| method | s / photo (median, range) | forward passes | images forwarded "
         "| backward passes | peak extra memory, MiB (3 runs) |", "|---|" + "---|" * 5]
for m in METHODS:
    c = costs[m]
    seconds = [x.seconds for x in c]
    lines.append(f"| {LABEL[m]} | {np.median(seconds):.2f} ({span(seconds, '{:.2f}')}) | "
                 f"{span([x.forward_passes for x in c])} | {span([x.forward_images for x in c])} "
                 f"| {span([x.backward_passes for x in c])} | {memory_cell(m)} |")
display(Markdown("\n".join(lines)))
backward = {m: [x.backward_passes for x in costs[m]] for m in METHODS}
assert all(b >= 1 for b in backward["lrp"])  # LRP's relevance pass is counted
assert backward["cam"] == [0] * len(PHOTOS) and all(b >= 1 for b in backward["grad_cam"])
assert min(passes["score_cam"]) > 100 * max(passes["grad_cam"])
''')

md(r'''
Score-CAM's forward images per photo are its non-constant feature maps, plus one shared pass for
the constant ones, plus the first pass (exercise 3 counts them): hundreds of forward passes where
Grad-CAM needs one forward and one backward pass. The counts are the ones printed in section 1,
measured as they happened, not an estimate. LRP's backward pass is its relevance pass through
the rebuilt network, counted like any other.
''')

md(r'''
## 6. The star table, with numbers

Two tables, so that no cell is empty: the first compares **every method on the same five
photos**, the second the methods within `EVERYWHERE_BUDGET` on the synthetic set and in the
sanity check. Each cell is the mean over images with the range (smallest to largest) in
brackets. Arrows say which direction is better. "Sanity ρ" is the Spearman correlation to the
original map after the first and after the last cut point (lower = more dependent on the
weights = passes). The reference maps are the rows every method must beat.
''')

code(r'''
def cell(values, fmt="{:.2f}"):
    v = torch.as_tensor(values).double()
    return f"{fmt.format(v.mean())} ({fmt.format(v.min())}-{fmt.format(v.max())})"


head = ["| method | deletion AUC ↓ | insertion AUC ↑ | Average Drop % ↓ | Increase % ↑ "
        f"| pointing, {len(OBJECTS)} objects ↑ | energy, {len(OBJECTS)} objects ↑ "
        "| s / photo |", "|---|" + "---|" * 7]
rows = []
for m in METHODS + REFERENCES:
    f, p = faith[m], photo_loc[m]
    seconds = f"{np.median([c.seconds for c in costs[m]]):.2f}"
    rows.append(f"| {LABEL[m]} | {cell(f['deletion'], '{:.3f}')} | "
                f"{cell(f['insertion'], '{:.3f}')} | {cell(f['drop'], '{:.0f}')} | "
                f"{100 * f['increase'].double().mean():.0f} | {int(p['hits'].sum())} / "
                f"{len(OBJECTS)} | {cell(p['energy'])} | {seconds} |")
display(Markdown(f"**Table 1: the {len(PHOTOS)} photos, every method**\n\n" +
                 "\n".join(head + rows)))
''')

code(r'''
head = [f"| method | pointing, {N_SYNTHETIC} synthetic ↑ | energy, synthetic ↑ "
        "| sanity ρ first cut ↓ | sanity ρ last cut ↓ | SSIM last cut ↓ |",
        "|---|" + "---|" * 5]
rows = []
for m in EVERYWHERE + REFERENCES:
    s = syn_loc[m]
    rows.append(f"| {LABEL[m]} | {s['hits'].double().mean():.2f} | {cell(s['energy'])} | "
                f"{rho[m][1]:.2f} | {rho[m][-1]:.2f} | {ssim[m][-1]:.2f} |")
display(Markdown(f"**Table 2: the methods within the budget "
                 f"({', '.join(LABEL[m] for m in EVERYWHERE)})**\n\n" + "\n".join(head + rows)))
''')

md(r'''
### Where the measurements agree with the papers, and where not

Computed from this run (the asserts below the text keep it honest):
''')

code(r'''
ad = {m: mean[m]["drop"] for m in METHODS}
ic = {m: 100 * faith[m]["increase"].double().mean().item() for m in METHODS}
best_ad = min(METHODS, key=ad.get)
print(f"Average Drop on the {len(PHOTOS)} photos: " +
      ", ".join(f"{LABEL[m]} {ad[m]:.1f} %" for m in sorted(METHODS, key=ad.get)))
print(f"Score-CAM {ad['score_cam']:.1f} % vs Grad-CAM {ad['grad_cam']:.1f} % and "
      f"Grad-CAM++ {ad['grad_cam_pp']:.1f} %")
print(f"Increase in Confidence: Grad-CAM++ {ic['grad_cam_pp']:.0f} %, "
      f"Grad-CAM {ic['grad_cam']:.0f} %")
''')

md(r'''
* **Score-CAM and Average Drop.** [Wang et al. (2020, Table 1)](references.md#wang2020) report,
  for VGG16 on 2000 ImageNet validation images, Score-CAM best: 31.5 % Average Drop against
  47.8 % for Grad-CAM and 45.5 % for Grad-CAM++. The line above gives this run's numbers for
  the same three methods on the same five photos; five photos decide nothing either way, and
  the dots in section 2 show how far apart single photos are.
* **Grad-CAM++ vs Grad-CAM.** [Chattopadhay et al. (2018)](references.md#chattopadhay2018)
  report a lower Average Drop and a higher Increase in Confidence for Grad-CAM++; compare with
  the lines above. Their motivating case, several instances of one class, is not among our
  photos.
* **CAM = Grad-CAM** on a GAP → linear head (asserted in section 1): stars that differ between
  them measure nothing.
* **"Best localisation"** depends on the metric and the data: compare the pointing and energy
  columns of the two tables, and the saturated pointing game on the synthetic set.
* **Sanity** ([Adebayo et al. 2018](references.md#adebayo2018)): they found Grad-CAM passes the
  cascading randomisation test; section 4 lists this run's verdict for every method within the
  budget.
''')

code(r'''
print(f"notebook compute time: {time.perf_counter() - START:.0f} s")
''')

md(r'''
## Exercises
''')

md(r'''
**Exercise 1.** (2 points) Write the energy-based pointing game yourself:
`energy_share(maps, masks)` takes maps `(N, H, W)` (non-negative) and boolean masks `(N, H, W)`,
min-max normalises each map to [0, 1] and returns the `(N,)` share of each map's mass inside
its mask. (You may assume no map is constant.)
''')

code(r'''
# Solution 1
def energy_share(maps, masks):
    maps = maps.double()
    lo = maps.flatten(1).min(1).values[:, None, None]  # SOLUTION
    hi = maps.flatten(1).max(1).values[:, None, None]  # SOLUTION
    unit = (maps - lo) / (hi - lo)  # SOLUTION
    share = (unit * masks).flatten(1).sum(1) / unit.flatten(1).sum(1)  # SOLUTION
    return share


print(energy_share(syn_loc["grad_cam"]["maps"], masks_syn[:3]))
''', tags=("solution", "hide-cell"))

md(r'''
<details><summary>Solution 1</summary>

Normalise per image (the minimum and maximum of *each* map, not of the batch), then divide the
mass inside the mask by the total mass. A map that is 1 inside the box and 0 outside scores 1.
</details>
''', tags=("solution",))

code(r'''
# Check 1
_box = torch.zeros(2, 8, 8, dtype=torch.bool)
_box[:, 2:5, 2:5] = True
_inside = _box.double() + 1.0  # 2 inside, 1 outside: all mass inside after normalisation
assert torch.allclose(energy_share(_inside, _box).double(), torch.ones(2, dtype=torch.float64))
assert torch.allclose(energy_share(3.0 - _inside, _box).double(),
                      torch.zeros(2, dtype=torch.float64))
''')

code(r'''
# Check 1 (hidden)
_maps = syn_loc["grad_cam"]["maps"]
_ref = metrics.energy_pointing_game(_maps, masks_syn[:3])
assert torch.allclose(torch.as_tensor(energy_share(_maps, masks_syn[:3])).double(), _ref,
                      atol=1e-5)
_r = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(1))
_m = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.7
assert torch.allclose(torch.as_tensor(energy_share(_r * 5 + 2, _m)).double(),
                      metrics.energy_pointing_game(_r, _m), atol=1e-6)
''')

md(r'''
**Exercise 2.** (2 points) A map that is the same for every class cannot be
class-discriminative. `cat_and_coffee` was explained for the cat and for the espresso
(`photo_maps[method]["cat_and_coffee"]`, one map per class in the order of
`classes["cat_and_coffee"]`). For every method in `METHODS`, compute `discrimination[method]`:
the energy share (`metrics.energy_pointing_game`, positive part of signed maps) of each class's
map in **its own** object's box minus that in the **other** object's box, averaged over the two
classes. Which registered method scores exactly 0, and why?
''')

code(r'''
# Solution 2
j = PHOTOS.index("cat_and_coffee")
own = {o.label: boxes_to_mask([sample_boxes("cat_and_coffee", lm)[o.label]], (SIDE, SIDE))
       for o in OBJECTS if o.image == "cat_and_coffee"}
order = ["cat", "espresso"]  # classes["cat_and_coffee"]: the cat (top-1), then the espresso
discrimination = {}
for method in METHODS:
    # BEGIN SOLUTION
    maps = positive(method, photo_maps[method]["cat_and_coffee"])
    gaps = []
    for k, label in enumerate(order):
        other = order[1 - k]
        e_own = metrics.energy_pointing_game(maps[k : k + 1], own[label])[0]
        e_other = metrics.energy_pointing_game(maps[k : k + 1], own[other])[0]
        gaps.append(float(e_own - e_other))
    discrimination[method] = sum(gaps) / 2
    # END SOLUTION
print({LABEL[m]: round(v, 2) for m, v in discrimination.items()})
''', tags=("solution", "hide-cell"))

md(r'''
<details><summary>Solution 2</summary>

Eigen-CAM scores exactly 0: its map is the first principal component of the feature maps, which
does not depend on the class (its record says `class_discriminative=False`), so "own box minus
other box" for the cat cancels "own box minus other box" for the espresso. The class-dependent
methods score clearly above 0: each class's map sits mostly in its own half of the picture.
</details>
''', tags=("solution",))

code(r'''
# Check 2
assert set(discrimination) == set(METHODS)
assert all(-1.0 <= float(v) <= 1.0 for v in discrimination.values())
for _m in METHODS:
    if not get_method(_m).class_discriminative:
        assert abs(discrimination[_m]) < 1e-6, _m
''')

code(r'''
# Check 2 (hidden)
_masks = {label: boxes_to_mask([box], (SIDE, SIDE))
          for label, box in sample_boxes("cat_and_coffee", lm).items()}
for _m in METHODS:
    _maps = positive(_m, photo_maps[_m]["cat_and_coffee"])
    _e = [[metrics.energy_pointing_game(_maps[k : k + 1], _masks[b])[0].item()
           for b in ("cat", "espresso")] for k in range(2)]
    _want = ((_e[0][0] - _e[0][1]) + (_e[1][1] - _e[1][0])) / 2
    assert abs(float(discrimination[_m]) - _want) < 1e-4, _m
assert float(discrimination["grad_cam"]) > 0.1
''')

md(r'''
**Exercise 3.** (1 point) Score-CAM's cost in section 5 is not 1280 forward images on every
photo. Compute `varying[name]`, for each photo in `PHOTOS`, the number of channels of
`lm.cam_layer`'s output (the feature maps Score-CAM masks with) that are **not constant** over
the 7 × 7 positions, with one forward pass and a hook (`xai_helpers.hooks.capture`).
''')

code(r'''
# Solution 3
from xai_helpers.hooks import capture

varying = {}
for k, name in enumerate(PHOTOS):
    # BEGIN SOLUTION
    with torch.no_grad(), capture(lm.model, lm.cam_layer) as cap:
        lm.model(x_photos[k : k + 1])
    flat = cap.activations[0].flatten(1)
    varying[name] = int((flat.amax(1) > flat.amin(1)).sum())
    # END SOLUTION
print(varying)
''', tags=("solution", "hide-cell"))

md(r'''
<details><summary>Solution 3</summary>

A constant channel (all zero after the ReLU6 is the usual case) gives an all-zero mask after
min-max normalisation; Score-CAM scores all of them with **one** shared pass. The count of
forward images per photo is therefore the varying channels, plus one pass for the constant
ones, plus the first pass that computes the activations (one image per class explained).
</details>
''', tags=("solution",))

code(r'''
# Check 3
assert set(varying) == set(PHOTOS)
assert all(isinstance(v, int) and 0 < v <= 1280 for v in varying.values())
''')

code(r'''
# Check 3 (hidden)
for _k, _name in enumerate(PHOTOS):
    _extra = int(varying[_name] < 1280)
    assert costs["score_cam"][_k].forward_images == (len(classes[_name]) + varying[_name]
                                                     + _extra), _name
''')

md(r'''
## Summary

* Every method of the registry ran on the **same five photos**, Score-CAM included; the methods
  within `EVERYWHERE_BUDGET` also ran on the synthetic set and in the sanity check. The rule is
  printed in section 1, with the forward images each method needed per photo.
* Faithfulness: insertion separates the methods from the reference maps more reliably than
  deletion, whose per-pixel version rewards high-frequency maps; Average Drop rewards smooth
  masks. The strip plots show each photo, not only the mean.
* Localisation: the pointing game saturates on large, centred objects; the energy-based version
  still separates the methods from "look at the centre".
* Sanity: the cascading randomisation separates methods that depend on the learned weights from
  maps that do not (the three references, by construction).
* Cost: forward and backward passes counted as they happened (LRP's relevance pass included);
  memory only where three runs agree. The two tables of section 6 are this notebook's star
  table, recomputed on every run.

Words you met here are in the [glossary](glossary.md), papers in the [references](references.md).

**Previous:** [05 · LRP](05_lrp.ipynb) and the method notebooks after it.
**Next:** [09 · Robustness](09_robustness.ipynb): do the explanations survive a perturbed input?
''')
