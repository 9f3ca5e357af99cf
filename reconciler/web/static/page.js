// The status page's live updates, with no framework and no build step.
//
// Every few seconds (main's data-poll) the script asks /live, with the page's
// query and the ETag of what it shows, whether anything changed: unchanged is a
// 304 without a body; changed is the inside of <main> rendered (and escaped) by
// the server, which replaces what is shown. The script never builds markup from
// data. The filter form applies as you type (the URL follows, so a reload or a
// bookmark shows the same); without this script the form and the links work as
// plain GET requests.
"use strict";
(function () {
  const main = document.getElementById("main");
  const form = document.getElementById("filter");
  const note = document.getElementById("updated");
  if (!main || !main.dataset.poll) return;
  const every = Number(main.dataset.poll) || 2000;
  const defaults = { q: "", state: "", kind: "", sort: "id", order: "asc", size: "100" };
  let query = location.search;
  let etag = main.dataset.etag || null; // of the live part the page was made with
  let timer = null;
  let inflight = null;

  function say(text) {
    if (note && note.textContent !== text) note.textContent = text;
  }

  async function refresh() {
    clearTimeout(timer);
    if (document.hidden) {
      timer = setTimeout(refresh, every);
      return;
    }
    if (inflight) inflight.abort();
    const controller = new AbortController();
    inflight = controller;
    const asked = query;
    try {
      const headers = etag ? { "If-None-Match": etag } : {};
      const response = await fetch("/live" + asked, {
        headers: headers,
        signal: controller.signal,
        cache: "no-cache",
        credentials: "same-origin",
      });
      if (asked !== query) return;
      if (response.status === 200) {
        const html = await response.text();
        if (asked !== query) return;
        etag = response.headers.get("ETag");
        const parsed = new DOMParser().parseFromString(html, "text/html");
        main.replaceChildren(...parsed.body.childNodes);
        say("Updated at " + new Date().toLocaleTimeString());
      } else if (response.status === 400) {
        say("Cannot filter that way: " + (await response.text()));
      } else if (response.status !== 304) {
        say("The daemon answered " + response.status + "; retrying");
      }
    } catch (error) {
      if (error.name === "AbortError") return;
      say("Cannot reach the daemon; retrying");
    } finally {
      if (inflight === controller) {
        inflight = null;
        timer = setTimeout(refresh, every);
      }
    }
  }

  function fromForm() {
    const params = new URLSearchParams();
    for (const [name, value] of new FormData(form)) {
      const text = String(value).trim();
      if (text !== "" && text !== defaults[name]) params.append(name, text);
    }
    const search = params.toString();
    return search ? "?" + search : "";
  }

  function apply() {
    const next = fromForm();
    if (next === query) return;
    query = next;
    etag = null;
    history.replaceState(null, "", location.pathname + next);
    refresh();
  }

  if (form) {
    let typing = null;
    form.addEventListener("input", function () {
      clearTimeout(typing);
      typing = setTimeout(apply, 250);
    });
    form.addEventListener("change", apply);
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      clearTimeout(typing);
      apply();
    });
  }
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
  timer = setTimeout(refresh, every);
})();
