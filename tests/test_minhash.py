import numpy as np
from datasketch import MinHash

from zhdata.minhash import optimal_bands, signatures
from zhdata.ngrams import codepoints, ngram_hashes

POOL = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可也你能而子那得里自学下过年说"


def _shingles(t, n=5):
    return {t[i:i + n] for i in range(len(t) - n + 1)}


def _pairs(rng, count=150, length=300):
    pairs = []
    for _ in range(count):
        a = "".join(rng.choice(list(POOL), length))
        b = list(a)
        rate = rng.uniform(0.0, 0.15)
        for i in np.nonzero(rng.random(length) < rate)[0]:
            b[i] = rng.choice(list(POOL))
        pairs.append((a, "".join(b)))
    return pairs


def test_hashes_are_stable_across_versions():
    # persisted band keys and exact hashes depend on these values: a change breaks resumed runs
    cp, off = codepoints(["中文abc"])
    h, starts, doc = ngram_hashes(cp, off, 3, seed=1)
    assert [int(x) for x in h] == [3194326734699289205, 4569877246855123629, 8410422939263209290]
    assert list(starts) == [0, 1, 2] and list(doc) == [0, 0, 0]
    assert signatures(["中华人民共和国"], num_perm=8, ngram=3, seed=1).tolist() == [
        [2300558072, 1229320581, 1229320581, 2300558072, 2300558072, 886601306, 1229320581, 2300558072]]


def test_estimates_jaccard_as_well_as_datasketch():
    rng = np.random.default_rng(0)
    pairs = _pairs(rng)
    truth, ours, theirs = [], [], []
    for a, b in pairs:
        sa, sb = _shingles(a), _shingles(b)
        truth.append(len(sa & sb) / len(sa | sb))
        sig = signatures([a, b], num_perm=128, ngram=5, seed=3)
        ours.append(float(np.mean(sig[0] == sig[1])))
        ma, mb = MinHash(num_perm=128, seed=3), MinHash(num_perm=128, seed=3)
        ma.update_batch([s.encode() for s in sa])
        mb.update_batch([s.encode() for s in sb])
        theirs.append(ma.jaccard(mb))
    truth, ours, theirs = map(np.array, (truth, ours, theirs))
    assert truth.min() < 0.3 and truth.max() > 0.9  # the pairs span the range of similarities
    err_ours, err_theirs = np.abs(ours - truth).mean(), np.abs(theirs - truth).mean()
    assert abs((ours - truth).mean()) < 0.01  # unbiased
    assert err_ours <= 1.2 * err_theirs + 0.005, (err_ours, err_theirs)


def test_identical_short_and_empty_texts():
    s = signatures(["完全相同的一段文字", "完全相同的一段文字", "短", "短", "", "另外的一段完全不同文字"])
    assert (s[0] == s[1]).all() and (s[2] == s[3]).all()
    assert (s[4] == 0xFFFFFFFF).all()  # empty text: empty signature, never equal to a real one
    assert np.mean(s[0] == s[5]) < 0.2
    assert len(np.unique(s[2])) == 1  # one shingle fills every bin


def test_optimal_bands_near_threshold():
    for t in (0.7, 0.8, 0.9):
        b, r = optimal_bands(t, 128)
        assert b * r <= 128
        assert abs((1 / b) ** (1 / r) - t) < 0.1


def test_ngram_hashes_equal_the_plain_polynomial():
    from zhdata.ngrams import _window_polynomial, seeded
    rng = np.random.default_rng(5)
    cp = rng.integers(0, 0x30000, 500).astype(np.uint32)
    mult = seeded(7, 1) | np.uint64(1)
    for n in (1, 3, 5, 13):
        want = []
        for i in range(len(cp) - n + 1):
            acc = 0
            for c in cp[i:i + n].tolist():
                acc = (acc * int(mult) + c) % (1 << 64)
            want.append(acc)
        assert _window_polynomial(cp, n, mult).tolist() == want


def _texts_of_every_length(rng, count=400, longest=80):
    pool = list(POOL) + list("abcXYZ 𠀀")
    return ["".join(rng.choice(pool, int(n))) for n in rng.integers(0, longest, count)]


def test_ngram_hashes_of_a_batch_equal_each_text_alone():
    from zhdata.ngrams import mix64, seeded
    texts = _texts_of_every_length(np.random.default_rng(8)) + ["", "ab", "", "abcdefgh"]
    cp, off = codepoints(texts)
    for n in (1, 3, 5, 13):
        h, starts, doc = ngram_hashes(cp, off, n, seed=4, whole_short=True)
        mult, salt = int(seeded(4, 1)) | 1, seeded(4, 2)
        want_h, want_start, want_doc, short = [], [], [], []
        for d, t in enumerate(texts):
            codes = [ord(c) for c in t]
            spans = [(i, codes[i:i + n]) for i in range(len(t) - n + 1)] if len(t) >= n else []
            if 0 < len(t) < n:
                short.append((int(off[d]), d, codes))  # whole-text hashes come after all n-gram hashes
            for i, window in spans:
                acc = 0
                for c in window:
                    acc = (acc * mult + c) % (1 << 64)
                want_h.append(acc), want_start.append(int(off[d]) + i), want_doc.append(d)
        for start, d, codes in short:
            acc = 0
            for c in codes:
                acc = (acc * mult + c) % (1 << 64)
            want_h.append(acc), want_start.append(start), want_doc.append(d)
        want = mix64(np.array(want_h, dtype=np.uint64) ^ salt)
        assert h.tolist() == want.tolist() and starts.tolist() == want_start and doc.tolist() == want_doc, n


def _densified_by_walking_probes(texts, num_perm, ngram, seed):
    """The definition: each empty bin copies the first filled bin on its own probe sequence (else the text's first
    filled bin), one bin at a time."""
    probes = np.random.default_rng([seed, num_perm, 7]).integers(0, num_perm, size=(num_perm, 1024))
    cp, off = codepoints(texts)
    h, _, doc = ngram_hashes(cp, off, ngram, seed, whole_short=True)
    bins = ((h >> np.uint64(32)) * np.uint64(num_perm)) >> np.uint64(32)
    out = np.full((len(texts), num_perm), 0xFFFFFFFF, dtype=np.uint32)
    for d, b, v in zip(doc.tolist(), bins.tolist(), (h & np.uint64(0xFFFFFFFF)).tolist()):
        out[d, b] = min(out[d, b], v)
    for d in range(len(texts)):
        filled = set(np.unique(bins[doc == d]).tolist())
        src = out[d].copy()
        for j in set(range(num_perm)) - filled if filled else ():
            k = next((int(k) for k in probes[j] if int(k) in filled), min(filled))
            out[d, j] = src[k]
    return out


def test_densification_equals_walking_each_probe_sequence():
    # short texts leave most bins empty: every empty bin is filled from the first filled bin on its probe sequence
    texts = _texts_of_every_length(np.random.default_rng(9), count=300, longest=60) + ["短", "", "一二三四五"]
    for num_perm, ngram, seed in ((128, 5, 1), (37, 3, 2), (300, 5, 3)):
        want = _densified_by_walking_probes(texts, num_perm, ngram, seed)
        assert np.array_equal(signatures(texts, num_perm, ngram, seed), want), (num_perm, ngram, seed)
