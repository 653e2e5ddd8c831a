"""The four subgraphs of tests/support/graphql/shop.graphql (accounts, products, inventory,
reviews), served by graphql-core with their data, and the supergraph written for their
ports. Expected answers in the tests are worked out by hand from DATA."""
from __future__ import annotations

import copy
import os
import re

from graphql import GraphQLError

from .subgraphs import Subgraph

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "graphql")

DATA = {
    "products": {"1": {"upc": "1", "sku": "S1", "name": "Table", "price": 899, "weight": 100, "internalCode": "T-1"},
                 "2": {"upc": "2", "sku": "S2", "name": "Couch", "price": 1299, "weight": 1000, "internalCode": "C-2"},
                 "3": {"upc": "3", "sku": "S3", "name": "Chair", "price": 54, "weight": 50, "internalCode": "C-3"}},
    "in_stock": {"1": True, "2": False, "3": True},
    "users": {"1": {"id": "1", "name": "Ada Lovelace", "username": "@ada", "birthDate": "1815-12-10"},
              "2": {"id": "2", "name": "Alan Turing", "username": "@complete", "birthDate": "1912-06-23"}},
    "reviews": [{"id": "1", "author": "1", "upc": "1", "body": "Love it!", "rating": 5},
                {"id": "2", "author": "1", "upc": "2", "body": "Too expensive.", "rating": 2},
                {"id": "3", "author": "2", "upc": "3", "body": "Could be better.", "rating": 3},
                {"id": "4", "author": "2", "upc": "1", "body": "Prefer something else.", "rating": 4}],
    "books": [{"title": "Dune", "author": "Herbert"}, {"title": "Database Design", "author": "Codd"}],
    "media": [{"__typename": "Movie", "id": "m1", "title": "Hackers", "minutes": 105},
              {"__typename": "Song", "id": "s1", "title": "Blue Monday", "seconds": 449}],
}

PRODUCTS_SDL = """
type Query { topProducts(first: Int = 5): [Product] product(upc: String!): Product search(text: String!): [SearchResult!]!
             media: [Media] }
type Mutation { setPrice(upc: String!, price: Int!): Product }
type Product @key(fields: "upc") @key(fields: "sku") { upc: String! sku: String! name: String price: Int weight: Int
                                                       internalCode: String @inaccessible }
union SearchResult = Product | Book
type Book { title: String! author: String }
interface Media { id: ID! title: String }
type Movie implements Media { id: ID! title: String minutes: Int }
type Song implements Media { id: ID! title: String seconds: Int }
"""

INVENTORY_SDL = """
type Product @key(fields: "upc") { upc: String! price: Int @external weight: Int @external inStock: Boolean
                                   shippingEstimate: Int @requires(fields: "price weight") }
"""

REVIEWS_SDL = """
type Query { latestReview: Review! }
type Mutation { addReview(upc: String!, body: String!): Review }
type Review @key(fields: "id") { id: ID! body: String rating: Int! author: User @provides(fields: "username")
                                 product: Product }
type User @key(fields: "id") { id: ID! username: String @external reviews: [Review] }
type Product @key(fields: "upc") { upc: String! reviews: [Review] }
"""

ACCOUNTS_SDL = """
type Query { me: User user(id: ID!): User }
type User @key(fields: "id") { id: ID! name: String username: String birthDate: String @inaccessible }
"""


class _Subgraphs:
    """Several subgraphs started and stopped together (`.all`: name -> Subgraph)."""

    all: dict

    def start(self):
        for s in self.all.values():
            s.start()
        return self

    def stop(self) -> None:
        for s in self.all.values():
            s.stop()


class Shop(_Subgraphs):
    def __init__(self):
        self.data = copy.deepcopy(DATA)
        d = self.data

        def review_view(r):
            return {"id": r["id"], "body": r["body"], "rating": r["rating"],
                    "author": {"__typename": "User", "id": r["author"], "username": d["users"][r["author"]]["username"]},
                    "product": {"__typename": "Product", "upc": r["upc"]}}

        def user(_, info, id):
            if id not in d["users"]:
                raise GraphQLError(f"no user {id}")
            return d["users"][id]

        def set_price(_, info, upc, price):
            d["products"][upc]["price"] = price
            return d["products"][upc]

        def add_review(_, info, upc, body):
            review = {"id": str(len(d["reviews"]) + 1), "author": "1", "upc": upc, "body": body, "rating": 5}
            d["reviews"].append(review)
            return review_view(review)

        def search(_, info, text):
            text = text.lower()
            return ([{"__typename": "Product", **p} for p in d["products"].values() if text in p["name"].lower()] +
                    [{"__typename": "Book", **b} for b in d["books"] if text in b["title"].lower()])

        def product_reference(rep):
            if "upc" in rep:
                return d["products"].get(rep["upc"])
            return next((p for p in d["products"].values() if p["sku"] == rep.get("sku")), None)

        self.products = Subgraph("products", PRODUCTS_SDL, resolvers={
            "Query.topProducts": lambda _, info, first=5: list(d["products"].values())[:first],
            "Query.product": lambda _, info, upc: d["products"].get(upc),
            "Query.search": search,
            "Query.media": lambda *_: d["media"],
            "Mutation.setPrice": set_price,
        }, references={"Product": product_reference}, entities=("Product",))
        self.inventory = Subgraph("inventory", INVENTORY_SDL, resolvers={
            "Product.shippingEstimate": lambda p, info: 0 if p["price"] > 1000 else p["weight"] // 2,
        }, references={"Product": lambda rep: {**rep, "inStock": d["in_stock"].get(rep["upc"])}},
            entities=("Product",))
        self.reviews = Subgraph("reviews", REVIEWS_SDL, resolvers={
            "Query.latestReview": lambda *_: review_view(d["reviews"][-1]),
            "Mutation.addReview": add_review,
            "User.reviews": lambda u, info: [review_view(r) for r in d["reviews"] if r["author"] == u["id"]],
            "Product.reviews": lambda p, info: [review_view(r) for r in d["reviews"] if r["upc"] == p["upc"]],
        }, references={"Review": lambda rep: next((review_view(r) for r in d["reviews"] if r["id"] == rep["id"]), None),
                       "User": lambda rep: {"id": rep["id"]}, "Product": lambda rep: {"upc": rep["upc"]}},
            entities=("Review", "User", "Product"))
        self.accounts = Subgraph("accounts", ACCOUNTS_SDL, resolvers={
            "Query.me": lambda *_: d["users"]["1"],
            "Query.user": user,
        }, references={"User": lambda rep: d["users"].get(rep["id"])}, entities=("User",))
        self.all = {"accounts": self.accounts, "products": self.products, "inventory": self.inventory,
                    "reviews": self.reviews}

    def reset(self) -> None:
        self.data.clear()
        self.data.update(copy.deepcopy(DATA))
        for s in self.all.values():
            s.operations.clear()
            s.fail = None
            s.delay = 0.0

    def supergraph(self, name: str = "shop.graphql", **urls) -> str:
        """The supergraph text with these subgraphs' ports (or `urls` given by name)."""
        return supergraph_text(name, {n: urls.get(n, s.url) for n, s in self.all.items()})


def supergraph_text(name: str, urls: dict) -> str:
    with open(os.path.join(HERE, name), encoding="utf-8") as f:
        text = f.read()
    with open(os.path.join(HERE, "header.graphql"), encoding="utf-8") as f:
        text = text.replace("#include header.graphql", f.read())
    return re.sub(r"http://127\.0\.0\.1:\{(\w+)\}/graphql", lambda m: urls[m.group(1)], text)


# --- tests/support/graphql/library.graphql: keys of several kinds, @override, @interfaceObject ---

LIBRARY = {
    "books": {"b1": {"id": "b1", "isbn": "111", "title": "SICP", "price": 1, "shelf": {"code": "A", "room": {"id": "r1"}},
                     "format": "EBOOK"},
              "b2": {"id": "b2", "isbn": "222", "title": "TAOCP", "price": 1,
                     "shelf": {"code": "B", "room": {"id": "r2"}}, "format": "LEGACY"}},
    "formats": {"111": ["PRINT", "AUDIO"], "222": ["PRINT"]},
    "authors": {"a1": {"id": "a1", "name": "Abelson"}, "a2": {"id": "a2", "name": "Knuth"}},
    "prices": {"b1": 45, "b2": 180}, "featured": {"b1": "a1", "b2": "a2"},
    "copies": {"111": 3, "222": 0},
    "shelves": {("A", "r1"): "Lisp corner", ("B", "r2"): "Algorithms"}, "floors": {"r1": 1, "r2": 2},
    "likes": {"b1": 10, "b2": 20, "a1": 5, "a2": 7},
}

CATALOG_SDL = """
type Query { books: [Book] node(id: ID!): Node findBooks(filter: BookFilter, sort: Sort): [Book] }
interface Node { id: ID! }
type Book implements Node @key(fields: "id") @key(fields: "isbn") { id: ID! isbn: String! title: String price: Int
                                                                     shelf: Shelf format: Format }
enum Format { PRINT EBOOK LEGACY }
enum Sort { TITLE PRICE }
input BookFilter { titleContains: String maxPrice: Int }
type Author implements Node @key(fields: "id") { id: ID! name: String }
type Shelf @key(fields: "code room { id }") { code: String! room: Room! books: [Book] }
type Room @shareable { id: ID! }
"""
PRICING_SDL = """
type Book @key(fields: "id") { id: ID! price: Int featuredAuthor: Author }
type Author @key(fields: "id", resolvable: false) { id: ID! }
"""
STOCK_SDL = """
type Query { shelves: [Shelf] }
type Book @key(fields: "isbn") { isbn: String! copies: Int formats: [Format] shelf: Shelf @external
                                 shippingClass: String @requires(fields: "shelf { code room { id } }") }
enum Format { PRINT AUDIO }
enum Sort { TITLE COPIES }
input BookFilter { titleContains: String inStock: Boolean }
type Shelf @key(fields: "code room { id }") { code: String! room: Room! label: String }
type Room @shareable { id: ID! floor: Int }
"""
SOCIAL_SDL = """
type Node @key(fields: "id") @interfaceObject { id: ID! likes: Int }
"""


class Library(_Subgraphs):
    def __init__(self):
        d = LIBRARY

        def node(_, info, id):
            if id in d["books"]:
                return {"__typename": "Book", **d["books"][id]}
            if id in d["authors"]:
                return {"__typename": "Author", **d["authors"][id]}
            return None

        def shelf_books(shelf, info):
            return [b for b in d["books"].values()
                    if b["shelf"]["code"] == shelf["code"] and b["shelf"]["room"]["id"] == shelf["room"]["id"]]

        def find_books(_, info, filter=None, sort=None):
            self.catalog_arguments = {"filter": filter, "sort": sort}
            found = [b for b in d["books"].values() if (filter or {}).get("titleContains", "") in b["title"]]
            return sorted(found, key=lambda b: b["title"]) if sort == "TITLE" else found

        self.catalog_arguments = None   # what findBooks was last given
        self.catalog = Subgraph("catalog", CATALOG_SDL, resolvers={
            "Query.books": lambda *_: list(d["books"].values()), "Query.node": node, "Shelf.books": shelf_books,
            "Query.findBooks": find_books},
            references={"Book": lambda rep: d["books"].get(rep.get("id")) or next(
                (b for b in d["books"].values() if b["isbn"] == rep.get("isbn")), None),
                "Author": lambda rep: d["authors"].get(rep["id"]),
                "Shelf": lambda rep: {"code": rep["code"], "room": rep["room"]}},
            entities=("Book", "Author", "Shelf"))
        self.pricing = Subgraph("pricing", PRICING_SDL, references={
            "Book": lambda rep: {"id": rep["id"], "price": d["prices"][rep["id"]],
                                 "featuredAuthor": {"id": d["featured"][rep["id"]]}}}, entities=("Book",))
        self.stock = Subgraph("stock", STOCK_SDL, resolvers={
            "Query.shelves": lambda *_: [{"code": c, "room": {"id": r, "floor": d["floors"][r]}, "label": label}
                                         for (c, r), label in d["shelves"].items()]},
            references={"Book": lambda rep: {"isbn": rep["isbn"], "copies": d["copies"][rep["isbn"]],
                                             "formats": d["formats"][rep["isbn"]],
                                             # From the nested @requires: the shelf's code and room.
                                             "shippingClass": f"{rep['shelf']['code']}/{rep['shelf']['room']['id']}"
                                             if "shelf" in rep else None},
                        "Shelf": lambda rep: {"code": rep["code"],
                                              "room": {"id": rep["room"]["id"], "floor": d["floors"][rep["room"]["id"]]},
                                              "label": d["shelves"][(rep["code"], rep["room"]["id"])]}},
            entities=("Book", "Shelf"))
        self.social = Subgraph("social", SOCIAL_SDL, references={
            "Node": lambda rep: {"id": rep["id"], "likes": d["likes"].get(rep["id"])}}, entities=("Node",))
        self.all = {"catalog": self.catalog, "pricing": self.pricing, "stock": self.stock, "social": self.social}

    def supergraph(self) -> str:
        return supergraph_text("library.graphql", {n: s.url for n, s in self.all.items()})
