"""Expert review: the dashboards reviewers work in, and what they publish.

Runs in each reviewer's single-user server (Voila kernels), talks to the usreview
service with the reviewer's own token; every read and write is checked and audited there.
"""
