// The web view's only script: bar tooltips, and live pages that refresh themselves.
// Live: a page marked data-live (the first page of the list, an in-flight
// transaction) fetches itself again every few seconds and swaps its content in
// place (the parts marked live-part: never the filters); it stops once the page is
// no longer live (the transaction ended), and waits while the tab is hidden.
"use strict";

const REFRESH_MS = 2000;

function wireTooltips(root) {
  const tip = document.getElementById("tip");
  for (const item of root.querySelectorAll(".bar-item, .attempt-item")) {
    const title = item.querySelector("title");
    if (title) title.remove(); // the custom tooltip replaces the browser's own
    item.addEventListener("mousemove", (event) => {
      event.stopPropagation(); // an earlier attempt's bar sits inside its step's item
      tip.textContent = item.dataset.tip;
      tip.style.left = event.clientX + 14 + "px";
      tip.style.top = event.clientY + 14 + "px";
      tip.hidden = false;
    });
    item.addEventListener("mouseleave", () => { tip.hidden = true; });
  }
}

async function refresh() {
  const content = document.getElementById("content");
  if (!content || !content.dataset.live) return;
  if (!document.hidden) {
    try {
      const answer = await fetch(location.href, { credentials: "same-origin" });
      if (answer.ok) {
        const page = new DOMParser().parseFromString(await answer.text(), "text/html");
        const fresh = page.getElementById("content");
        if (fresh) {
          // Only the parts that change are swapped: a filter being typed stays as it is.
          for (const part of fresh.querySelectorAll(".live-part[id]")) {
            const old = document.getElementById(part.id);
            if (old) old.replaceWith(part);
          }
          document.getElementById("tip").hidden = true;
          if (fresh.dataset.live) content.dataset.live = "1";
          else delete content.dataset.live;
          content.dataset.refreshed = String(Number(content.dataset.refreshed || 0) + 1);
          wireTooltips(content);
        }
      }
    } catch (error) {
      // The server is away for a moment: try again at the next tick.
    }
  }
  if (content.dataset.live) setTimeout(refresh, REFRESH_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  wireTooltips(document);
  setTimeout(refresh, REFRESH_MS);
});
