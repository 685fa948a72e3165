// The reviewer-name form: POST /api/login with the session's CSRF token, then start reviewing.
"use strict";
document.getElementById("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const response = await fetch("/api/login", {
    method: "POST", headers: {"Content-Type": "application/json", "X-CSRF-Token": csrf},
    body: JSON.stringify({reviewer: document.getElementById("name").value}),
  });
  if (response.ok) {
    window.location.assign("/review");
  } else {
    document.getElementById("error").textContent = (await response.json()).detail || response.statusText;
  }
});
