"""The snapshot store and its transaction log: bounded, and undone with rolled-back work."""

from proxy.locking.snapshots import Budget, SnapshotStore, TransactionLog
from proxy.values import ReadValue, normalize_key


def rv(text):
    return ReadValue(0, 23, text.encode())


def test_rollback_undoes_what_the_transaction_learned():
    store, txlog = SnapshotStore(100), TransactionLog()
    store.put((1, (1,)), {"v": rv("1")})
    txlog.begin()
    store.put((1, (1,)), {"v": rv("2")}, txlog)
    store.put((1, (2,)), {"v": rv("5")}, txlog)
    txlog.rollback()
    assert store.get((1, (1,)))["v"] == rv("1")
    assert store.get((1, (2,))) is None


def test_savepoints():
    store, txlog = SnapshotStore(100), TransactionLog()
    txlog.begin()
    store.put((1, (1,)), {"v": rv("1")}, txlog)
    txlog.savepoint("a")
    store.put((1, (1,)), {"v": rv("2")}, txlog)
    txlog.savepoint("b")
    store.put((1, (1,)), {"v": rv("3")}, txlog)
    txlog.rollback_to("b")
    assert store.get((1, (1,)))["v"] == rv("2")
    txlog.release("a")
    store.put((1, (1,)), {"v": rv("4")}, txlog)
    txlog.rollback()
    assert store.get((1, (1,))) is None


def test_commit_keeps():
    store, txlog = SnapshotStore(100), TransactionLog()
    store.put((1, (1,)), {"v": rv("1")}, txlog)
    txlog.commit()
    txlog.rollback()
    assert store.get((1, (1,)))["v"] == rv("1")


def test_bounds_per_store_and_in_total():
    budget = Budget(5)
    a, b = SnapshotStore(3, budget), SnapshotStore(3, budget)
    for i in range(10):
        a.put((1, (i,)), {"v": rv("1")})
    assert len(a) == 3 and a.get((1, (9,))) is not None and a.get((1, (0,))) is None
    for i in range(3):
        b.put((1, (i,)), {"v": rv("1")})
    assert len(a) + len(b) <= 5 and budget.used == len(a) + len(b)
    assert budget.evictions >= 1
    a.close()
    assert budget.used == len(b)


def test_keys_match_across_formats():
    assert normalize_key(23, 0, b"42") == normalize_key(23, 1, b"\x00\x00\x00\x2a")
    assert normalize_key(20, 1, b"\x00" * 7 + b"\x2a") == 42
    assert normalize_key(2950, 0, b"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11") == normalize_key(
        2950, 1, bytes.fromhex("a0eebc999c0b4ef8bb6d6bb9bd380a11")
    )
    assert normalize_key(1700, 0, b"10.50") == normalize_key(1700, 0, b"10.5")
