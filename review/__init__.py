"""Tools for people checking datasets: pictures of samples, and (later) the review app."""
