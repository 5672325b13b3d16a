import numpy as np

from zhdata.lsh import LSHIndex, UnionFind
from zhdata.minhash import signatures


def _components_bfs(n, edges):
    adj = {i: set() for i in range(n)}
    for u, v in edges:
        adj[u].add(v)
        adj[v].add(u)
    label = [-1] * n
    for s in range(n):
        if label[s] >= 0:
            continue
        stack, comp = [s], []
        label[s] = s
        while stack:
            x = stack.pop()
            comp.append(x)
            for y in adj[x]:
                if label[y] < 0:
                    label[y] = s
                    stack.append(y)
        m = min(comp)
        for x in comp:
            label[x] = m
    return label


def test_union_find_matches_bfs_and_roots_are_minimum():
    rng = np.random.default_rng(1)
    n = 500
    edges = rng.integers(0, n, size=(300, 2))
    uf = UnionFind(n)
    for chunk in np.array_split(edges, 5):
        uf.union(chunk[:, 0], chunk[:, 1])
    assert uf.labels().tolist() == _components_bfs(n, edges.tolist())


def test_lsh_clusters_near_duplicates_across_batches(tmp_path):
    rng = np.random.default_rng(2)
    pool = list("天地玄黄宇宙洪荒日月盈昃辰宿列张寒来暑往秋收冬藏闰余成岁律吕调阳云腾致雨露结为霜")
    base = ["".join(rng.choice(pool, 400)) for _ in range(6)]
    near = base[2][:200] + "某" + base[2][201:]  # one edit: Jaccard ~0.98
    texts = base + [near, base[4]]
    index = LSHIndex(tmp_path, bands=9, rows=13)
    index.add(signatures(texts[:4]))
    index.add(signatures(texts[4:]))
    roots = index.clusters()
    assert roots.tolist() == [0, 1, 2, 3, 4, 5, 2, 4]
    index.close()


def test_verify_callback_filters_pairs(tmp_path):
    sigs = np.tile(np.arange(16, dtype=np.uint32), (3, 1))  # all three collide in every band
    index = LSHIndex(tmp_path, bands=4, rows=4)
    index.add(sigs)
    roots = index.clusters(verify=lambda u, v: v != 2)  # refuse every pair with document 2
    assert roots.tolist() == [0, 0, 2]
    index.close()
