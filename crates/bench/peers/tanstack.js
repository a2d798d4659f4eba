// The peer page of `cargo xtask bench peers`: the same board as syncline's app, kept fresh the way a TanStack
// Query v5 app does it — the board query polled every 5 s (not while the tab is hidden: TanStack's default), shared
// across the browser's tabs by the broadcast plugin (a tab's fetch updates the others), refetched when a tab
// becomes visible. It renders cards the way the app does (`.card .card-title`, keyed by id), so the benchmark
// observes both pages the same way.
import { QueryClient, QueryObserver } from '@tanstack/query-core';
import { broadcastQueryClient } from '@tanstack/query-broadcast-client-experimental';

const board = new URLSearchParams(location.search).get('board');
const client = new QueryClient({ defaultOptions: { queries: { staleTime: 0, gcTime: 5 * 60 * 1000 } } });
broadcastQueryClient({ queryClient: client, broadcastChannel: 'tanstack-bench' });
client.mount();

const list = document.createElement('ol');
list.className = 'cards';
document.body.append(list);

function render(snapshot) {
  if (!snapshot) return;
  const seen = new Set();
  for (const card of snapshot.cards) {
    seen.add(card.id);
    let item = list.querySelector(`[data-card-id="${card.id}"]`);
    if (!item) {
      item = document.createElement('li');
      item.className = 'card';
      item.dataset.cardId = card.id;
      const title = document.createElement('span');
      title.className = 'card-title';
      item.append(title);
      list.append(item);
    }
    const title = item.firstChild;
    if (title.textContent !== card.title) title.textContent = card.title;
  }
  for (const item of [...list.children]) {
    if (!seen.has(item.dataset.cardId)) item.remove();
  }
}

const observer = new QueryObserver(client, {
  queryKey: ['board', board],
  queryFn: async () => {
    const response = await fetch(`/api/boards/${board}`, { credentials: 'same-origin' });
    if (!response.ok) throw new Error(`${response.status}`);
    return response.json();
  },
  refetchInterval: 5000,
});
observer.subscribe((result) => render(result.data));
render(observer.getCurrentResult().data);
