// "run now": POST /runs with the key the operator typed. The key lives only in the
// input field; it is never written to storage, cookies or the URL.
(function () {
  const result = document.getElementById("run-result");
  document.querySelectorAll("button.run-now").forEach(function (button) {
    button.addEventListener("click", async function () {
      const key = document.getElementById("api-key").value;
      if (!key) { result.textContent = "type an API key first"; return; }
      button.disabled = true;
      try {
        const response = await fetch("/runs", {
          method: "POST",
          headers: { "Content-Type": "application/json", "X-API-Key": key },
          body: JSON.stringify({ sources: [button.dataset.source] }),
        });
        const body = await response.json();
        if (response.status === 202) {
          result.textContent = "run " + body.runs[0].id + " queued for " + button.dataset.source;
          setTimeout(function () { window.location.reload(); }, 1500);
        } else {
          result.textContent = response.status + ": " + (body.error ? body.error.message : "error");
        }
      } catch (error) {
        result.textContent = "request failed: " + error;
      } finally {
        button.disabled = false;
      }
    });
  });
})();
