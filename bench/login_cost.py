"""What a login costs the server, and what the throttle costs an attacker.

Prints the median time of one argon2id hash and one verification (OWASP parameters) next to
the unsalted SHA-256 the tutorial used, and how long 1,000 guesses against one account take
when the attacker waits out every lock.

    python bench/login_cost.py [--runs 50]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time

from ragchat.auth import ACCOUNT_FREE_FAILURES, HASHER, lock_seconds


def median_seconds(action, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    runs = parser.parse_args().runs
    password = "correct horse battery staple"
    stored = HASHER.hash(password)
    hashing = median_seconds(lambda: HASHER.hash(password), runs)
    verifying = median_seconds(lambda: HASHER.verify(stored, password), runs)
    sha = median_seconds(lambda: hashlib.sha256(password.encode()).hexdigest(), runs)
    print(f"argon2id m=19 MiB t=2 p=1: hash {hashing*1000:.1f} ms, verify {verifying*1000:.1f} ms "
          f"(median of {runs})")
    print(f"unsalted SHA-256 (the tutorial's): {sha*1e6:.1f} µs, {verifying/sha:,.0f} times cheaper "
          "to guess against")
    for guesses in (100, 1000, 10000):
        waited = sum(lock_seconds(n, ACCOUNT_FREE_FAILURES) for n in range(1, guesses))
        print(f"{guesses:>6} guesses against one account under the throttle: "
              f"{waited/86400:,.1f} days")


if __name__ == "__main__":
    main()
