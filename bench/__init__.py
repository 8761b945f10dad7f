"""Throughput benchmark of ``promptbatch run`` against fake OpenAI-compatible servers (issue 4).

``python -m bench`` runs every scenario, prints a table and writes ``bench/RESULTS.md``;
``python -m bench --only S1,S3`` runs some of them. Each server and each client runs in its
own process, so the client's figures (rows/s, peak RSS) are its own.
"""
